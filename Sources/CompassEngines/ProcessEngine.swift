import CompassProtocol
import CompassSystem
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An engine that is a separate process group speaking the engine protocol (docs/engines.md) over
/// fds 3 and 4. Each start is a *generation*: one thread that owns its process and its three pipes,
/// and is the only one that spawns, signals and reaps it (ProcessEngine+Generation.swift). The
/// worker's thread only queues messages and takes events, so a stuck engine never blocks the
/// worker's heartbeats; `stop()` records a decision the generation's thread carries out.
public final class ProcessEngine: Engine, Sendable {
    public let name: String
    public let command: EngineCommand
    let logger: Logger
    let hooks: EngineHooks
    let wakeup: WakeupEvent
    let state = Mutex(State())

    /// Which generation is current, and the events it posted for the worker.
    struct State {
        var started = 0
        /// The generation whose events reach the worker; nil once stopped.
        var current: Generation?
        /// The last generation started: the next one waits until it has ended.
        var last: Generation?
        var events: [EngineEvent] = []
    }

    public init(name: String, command: EngineCommand, logger: Logger, hooks: EngineHooks = EngineHooks()) throws {
        self.name = name
        self.command = command
        self.logger = logger
        self.hooks = hooks
        wakeup = try WakeupEvent()
    }

    public var eventFD: Int32 { wakeup.fd }

    public func start() throws {
        let wake = try WakeupEvent()
        let (gen, previous, replaced) = state.withLock { s in
            s.started += 1
            let g = Generation(number: s.started, wake: wake)
            let previous = s.last, replaced = s.current
            s.current = g
            s.last = g
            return (g, previous, replaced)
        }
        replaced?.requestStop() // one process per engine: a start without a stop replaces it
        let thread = Thread { [self] in self.supervise(gen, after: previous) }
        thread.name = "engine-\(name)-\(gen.number)"
        thread.start()
    }

    public func submit(_ job: EngineJob) {
        let head = EngineProtocol.batchHead(batchID: job.batchID, attempt: job.attempt, deadlineMilliseconds: job.meta.deadlineMilliseconds)
        // The payload goes out as it came (the array shares its storage: no copy). It passed the
        // broker's JSON check, so a raw CR or LF in it can only be whitespace between tokens:
        // blanking them, in the rare payload that has any, keeps the message on one line.
        var payload = job.payload
        let breaksLine = payload.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return false }
            return memchr(base, 0x0a, raw.count) != nil || memchr(base, 0x0d, raw.count) != nil
        }
        if breaksLine {
            payload = payload.map { $0 == 0x0a || $0 == 0x0d ? 0x20 : $0 }
        }
        send([head, payload, EngineProtocol.batchTail])
    }

    public func cancel(batchID: String, attempt: UInt32) {
        send([EngineProtocol.cancel(batchID: batchID, attempt: attempt)])
    }

    public func takeEvents() -> [EngineEvent] {
        wakeup.clear()
        return state.withLock { s in
            defer { s.events.removeAll() }
            return s.events
        }
    }

    /// Asks the engine to exit, then SIGTERM and SIGKILL to its whole group: the generation's own
    /// thread does it, whatever it is doing (waiting to spawn, spawning, running).
    public func stop() {
        let gen = state.withLock { s in
            defer { s.current = nil } // events of the stopped generation are dropped from now on
            return s.current
        }
        gen?.requestStop()
    }

    /// Blocks until the last generation started has ended (its process reaped, its group killed),
    /// or `timeoutSeconds` passes; true when it has. For tests and orderly shutdown.
    func waitUntilEnded(timeoutSeconds: Double) -> Bool {
        guard let last = state.withLock({ $0.last }) else { return true }
        return last.awaitEnd(timeoutSeconds: timeoutSeconds)
    }

    /// Queues the chunks of one line for the current generation's fd 3.
    func send(_ chunks: [[UInt8]]) {
        state.withLock { $0.current }?.enqueue(chunks)
    }

    func post(_ event: EngineEvent, _ gen: Generation) {
        let posted = state.withLock { s in
            guard s.current === gen else { return false }
            s.events.append(event)
            return true
        }
        if posted { wakeup.signal() }
    }
}

/// What the worker wants done around each engine start.
public struct EngineHooks: Sendable {
    /// Runs on the engine's own thread before each spawn (e.g. wait until the GPUs' memory is free).
    public var beforeStart: @Sendable () -> Void = {}
    /// Called with the engine's process group id once it is spawned.
    public var onSpawn: @Sendable (Int32) -> Void = { _ in }
    /// SIGTERM-to-SIGKILL grace when stopping.
    public var stopGraceSeconds: Double = 3
    /// Tests only: runs on the engine's thread once it has decided to spawn, before it does (the
    /// window where a `stop()` used to be lost).
    var afterSpawnDecision: @Sendable () -> Void = {}

    public init(beforeStart: @escaping @Sendable () -> Void = {}, onSpawn: @escaping @Sendable (Int32) -> Void = { _ in },
                stopGraceSeconds: Double = 3) {
        self.beforeStart = beforeStart
        self.onSpawn = onSpawn
        self.stopGraceSeconds = stopGraceSeconds
    }
}

/// How to start an engine process.
public struct EngineCommand: Sendable, Equatable {
    public var executable: String
    public var arguments: [String]
    /// The complete environment of the engine.
    public var environment: [String: String]

    public init(executable: String, arguments: [String], environment: [String: String]) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
    }
}
