import CompassProtocol
import CompassSystem
import DequeModule
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// An engine that is a separate process group speaking the engine protocol (docs/engines.md) over
/// fds 3 and 4. Each start is a *generation* with three threads of its own: one spawns the process
/// and reads its events, one writes to it, one logs its stdout/stderr. The worker's thread only
/// queues messages and takes events, so a stuck engine can never block the worker's heartbeats.
public final class ProcessEngine: Engine, @unchecked Sendable {
    // @unchecked: mutable state is guarded by `lock`; each generation's fds belong to its threads.
    public let name: String
    public let command: EngineCommand
    let logger: Logger
    let hooks: EngineHooks
    let wakeup: WakeupEvent
    let lock = NSLock()
    var generation = 0
    var events: [EngineEvent] = []
    var current: Generation?
    /// The process group of the previous generation, which a new start waits to see gone.
    var lastGroup: Int32?

    public init(name: String, command: EngineCommand, logger: Logger, hooks: EngineHooks = EngineHooks()) throws {
        self.name = name
        self.command = command
        self.logger = logger
        self.hooks = hooks
        wakeup = try WakeupEvent()
    }

    public var eventFD: Int32 { wakeup.fd }

    public func start() throws {
        let gen = lock.withLock { () -> Generation in
            generation += 1
            let g = Generation(number: generation, previousGroup: lastGroup)
            current = g
            return g
        }
        let thread = Thread { [self] in self.supervise(gen) }
        thread.name = "engine-\(name)-\(gen.number)"
        thread.start()
    }

    public func submit(_ job: EngineJob) {
        var line = Array(#"{"type":"batch","batch_id":"#.utf8) + jsonString(job.batchID)
        line += Array(#","attempt":\#(job.attempt),"deadline_ms":\#(job.meta.deadlineMilliseconds),"requests":"#.utf8)
        // The payload passed the broker's JSON check, so a raw CR or LF in it can only be whitespace
        // between tokens: blanking them keeps the message on one line without changing its meaning.
        line += job.payload.map { $0 == 0x0a || $0 == 0x0d ? 0x20 : $0 }
        line += Array("}\n".utf8)
        send(line)
    }

    public func cancel(batchID: String, attempt: UInt32) {
        send(Array(#"{"type":"cancel","batch_id":"#.utf8) + jsonString(batchID) + Array(#","attempt":\#(attempt)}"#.utf8) + [0x0a])
    }

    public func takeEvents() -> [EngineEvent] {
        wakeup.clear()
        return lock.withLock {
            let out = events
            events.removeAll()
            return out
        }
    }

    /// Asks the engine to exit, then SIGTERM and SIGKILL to its whole group, off the caller's thread.
    public func stop() {
        let gen: Generation? = lock.withLock {
            generation += 1 // events of the stopped generation are dropped from now on
            let g = current
            current = nil
            if let pid = g?.pid { lastGroup = pid }
            return g
        }
        guard let gen else { return }
        gen.stopping = true
        gen.outbox.send(Array(#"{"type":"shutdown"}"#.utf8) + [0x0a])
        let grace = hooks.stopGraceSeconds
        Thread.detachNewThread {
            guard let child = gen.child else { return }
            child.signalGroup(SIGTERM)
            if child.wait(timeoutSeconds: grace) == nil { child.signalGroup(SIGKILL) }
            child.signalGroup(SIGKILL) // whatever it started that is still around
            gen.outbox.close()
        }
    }

    func send(_ line: [UInt8]) {
        lock.withLock { current }?.outbox.send(line)
    }

    func post(_ event: EngineEvent, _ gen: Generation) {
        let posted = lock.withLock { () -> Bool in
            guard generation == gen.number else { return false }
            events.append(event)
            return true
        }
        if posted { wakeup.signal() }
    }

    func jsonString(_ s: String) -> [UInt8] {
        Array((try? JSONEncoder().encode(s)) ?? Data("\"\"".utf8))
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
