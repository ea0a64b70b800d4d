#pragma once
// OpenSSL (Debian's libssl 3.0, built with kernel TLS) for the agent's and the collector's TLS.
// Swift cannot call OpenSSL's function-like macros: the few we need are wrapped here, each a
// static inline function named spsh_ after what it wraps.
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/bio.h>
#include <string.h>

/// SSL_CTX_set_min_proto_version (a macro over SSL_CTX_ctrl).
static inline int spsh_ssl_ctx_set_min_proto(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}

/// SSL_CTX_set_max_proto_version (a macro over SSL_CTX_ctrl).
static inline int spsh_ssl_ctx_set_max_proto(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}

/// The context's own certificate, as "serial <HEX>, valid until <date>", written to `out`
/// (NUL-terminated, at most `cap` bytes); 0 when it has none.
static inline int spsh_ctx_cert_summary(SSL_CTX *ctx, char *out, int cap) {
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    if (!cert || cap < 2) return 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (!b) return 0;
    BIO_puts(b, "serial ");
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    BIO_puts(b, hex ? hex : "?");
    OPENSSL_free(hex);
    BN_free(bn);
    BIO_puts(b, ", valid until ");
    ASN1_TIME_print(b, X509_get0_notAfter(cert));
    int n = BIO_read(b, out, cap - 1);
    out[n > 0 ? n : 0] = 0;
    BIO_free(b);
    return n > 0 ? n : 0;
}

/// Turns kernel TLS on for the context's connections (SSL_OP_ENABLE_KTLS): OpenSSL hands the
/// keys to the kernel after the handshake where the kernel and the cipher allow it.
static inline void spsh_ssl_ctx_enable_ktls(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
}

/// Leaves out renegotiation, the compression OpenSSL might offer and session resumption, and
/// asks for the server's cipher order. A write retried after WANT_WRITE may come from another address of the same
/// bytes (Swift does not promise a buffer's address from one call to the next).
static inline void spsh_ssl_ctx_harden(SSL_CTX *ctx) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    // No session tickets: an agent keeps one connection for long, and resumption would skip
    // the certificate checks that bind it to its agent id.
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
}

/// Read-ahead (SSL_CTX_set_read_ahead, a macro over SSL_CTX_ctrl) with a read buffer of
/// `bytes`: OpenSSL reads several records a syscall instead of two syscalls a record. It keeps
/// records in OpenSSL's buffer, where the kernel cannot take over receiving (kernel TLS).
static inline void spsh_ssl_ctx_read_ahead(SSL_CTX *ctx, size_t bytes) {
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, bytes);
}

/// Whether the kernel took the send (write) keys of this connection.
static inline int spsh_ktls_send(SSL *ssl) { return (int)BIO_get_ktls_send(SSL_get_wbio(ssl)); }
/// Whether the kernel took the receive (read) keys of this connection.
static inline int spsh_ktls_recv(SSL *ssl) { return (int)BIO_get_ktls_recv(SSL_get_rbio(ssl)); }

/// SSL_set_tlsext_host_name (SNI; a macro over SSL_ctrl).
static inline int spsh_ssl_set_sni(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }

/// The peer's subjectAltName entries of type DNS or URI, written to `out` as NUL-separated
/// strings (at most `cap` bytes); returns the bytes written, or -1 when there is no peer
/// certificate.
static inline long spsh_peer_sans(SSL *ssl, char *out, long cap) {
    X509 *cert = SSL_get1_peer_certificate(ssl);
    if (!cert) return -1;
    long used = 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (names) {
        for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
            const GENERAL_NAME *n = sk_GENERAL_NAME_value(names, i);
            const ASN1_STRING *s = NULL;
            if (n->type == GEN_DNS) s = n->d.dNSName;
            else if (n->type == GEN_URI) s = n->d.uniformResourceIdentifier;
            if (!s) continue;
            int len = ASN1_STRING_length(s);
            const unsigned char *data = ASN1_STRING_get0_data(s);
            // An embedded NUL would make one name look like another: such a name is skipped.
            if (len <= 0 || memchr(data, 0, (size_t)len)) continue;
            if (used + len + 1 > cap) break;
            memcpy(out + used, data, (size_t)len);
            used += len;
            out[used++] = 0;
        }
        GENERAL_NAMES_free(names);
    }
    X509_free(cert);
    return used;
}
