import SpoolshipDaemon
import Synchronization
import Testing

/// What happened, in order, across threads.
final class Events: Sendable {
    let list = Mutex<[String]>([])
    func add(_ e: String) { list.withLock { $0.append(e) } }
    var all: [String] { list.withLock { $0 } }
}

/// A service that records its stop.
final class FakeService: DaemonService {
    let name: String
    let events: Events
    init(_ name: String, _ events: Events) {
        self.name = name
        self.events = events
    }
    func stop() { events.add("stop \(name)") }
}

/// A main service that runs until stopped, as the agent and the collector do.
final class FakeMain: Sendable {
    let stopped = Latch()
    let events: Events
    init(_ events: Events) { self.events = events }
    func stop() {
        events.add("stop main")
        stopped.open()
    }
}

struct Failed: Error {}

@Test func lifecycle_stop_endsTheMainService_thenTheServicesInReverseOrder() throws {
    let events = Events()
    let lifecycle = DaemonLifecycle()
    let main = FakeMain(events)
    let running = Latch()
    let returned = Latch()
    startThread("test-main") {
        let status = lifecycle.run { () -> Int32 in
            lifecycle.add(FakeService("control", events))
            lifecycle.add(FakeService("metrics", events))
            lifecycle.whileRunning(stop: { main.stop() })
            running.open()
            // The main service: runs until stopped (bounded, so a failing test ends).
            #expect(main.stopped.wait(timeout: 30))
            events.add("main returned")
            return 0
        }
        #expect(status == 0)
        returned.open()
    }
    #expect(running.wait(timeout: 30))
    #expect(!lifecycle.isStopping)
    lifecycle.requestStop()
    #expect(lifecycle.isStopping)
    #expect(returned.wait(timeout: 30))
    #expect(events.all == ["stop main", "main returned", "stop metrics", "stop control"])
}

@Test func lifecycle_stopDuringStart_isDeliveredOnceTheMainServiceRuns() {
    let events = Events()
    let lifecycle = DaemonLifecycle()
    lifecycle.requestStop()
    #expect(events.all.isEmpty)
    lifecycle.whileRunning(stop: { events.add("stop main") })
    #expect(events.all == ["stop main"])
    // Between two runs (a reload), a stop reaches no one; the next main service gets it.
    lifecycle.whileRunning(stop: nil)
    lifecycle.requestStop()
    #expect(events.all == ["stop main"])
    lifecycle.whileRunning(stop: { events.add("stop second") })
    #expect(events.all == ["stop main", "stop second"])
}

@Test func lifecycle_aStartThatFailsHalfWay_stopsWhatStarted() {
    let events = Events()
    let lifecycle = DaemonLifecycle()
    #expect(throws: Failed.self) {
        try lifecycle.run {
            lifecycle.add(FakeService("control", events))
            lifecycle.add(FakeService("metrics", events))
            throw Failed()
        }
    }
    #expect(events.all == ["stop metrics", "stop control"])
    // Each service is stopped once.
    lifecycle.stopServices()
    #expect(events.all == ["stop metrics", "stop control"])
}
