#pragma once
// Intel's ISA-L: its CRC-32 is the one zlib computes (crc32_gzip_refl), with the
// carry-less multiply instructions: about 3x zlib 1.2's speed on these machines.
#include <isa-l/crc.h>
