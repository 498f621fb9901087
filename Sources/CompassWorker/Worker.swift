import CompassEngines
import CompassProtocol
import CompassSystem
import CompassWire
import Foundation
import Logging
import ZMQ

/// A worker: owns one engine (one TP group), registers it with the broker, and runs the batches
/// the broker sends. Every decision is `WorkerStateMachine`'s; this is its I/O: one thread, one
/// poll loop over the broker socket, the engine's event fd and the signal pipe, feeding events
/// and the clock to the machine and carrying out the actions it returns.
/// Create it on the thread that calls `run`.
public final class Worker {
    public let options: WorkerOptions
    let logger: Logger
    let context: ZMQContext
    let engine: any Engine
    let host: String
    let gpuInfo: () -> [GPUInfo]
    var machine: WorkerStateMachine

    // The connection the machine asked for (`.connect`), with a new identity each time.
    var socket: ZMQSocket?
    var monitor: SocketMonitor?
    var incarnation = 0
    var identity = ""

    public init(options: WorkerOptions, context: ZMQContext, engine: any Engine, logger: Logger,
                gpuInfo: @escaping () -> [GPUInfo] = { [] }) {
        self.options = options
        self.context = context
        self.engine = engine
        self.logger = logger
        self.gpuInfo = gpuInfo
        machine = WorkerStateMachine(options: options)
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count)
        host = String(decoding: name.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    var now: UInt64 { MonotonicClock.milliseconds() }

    /// Runs until drained (SIGTERM/SIGINT) or until the engine cannot be started; returns the exit code.
    public func run(signals: SignalWatcher?) throws -> Int32 {
        try perform(machine.start(now: now))
        while machine.exitCode == nil {
            let poller = ZMQPoller()
            let engineIndex = poller.add(fd: engine.eventFD)
            let signalIndex = signals.map { poller.add(fd: $0.fd) }
            let socketIndex = socket.map { poller.add($0) }
            let monitorIndex = monitor.map { poller.add($0.socket) }
            let current = socket
            // Poll until the socket changes (connect, reconnect) or the worker is done.
            while machine.exitCode == nil && socket === current {
                try poller.poll(timeoutMilliseconds: 50)
                if let signalIndex, poller.isReadable(signalIndex), let signals {
                    for sig in signals.drain() where sig == SIGTERM || sig == SIGINT {
                        try perform(machine.signal(signalName(sig), now: now))
                    }
                }
                if poller.isReadable(engineIndex) {
                    for event in engine.takeEvents() { try handleEngine(event) }
                }
                if let socketIndex, poller.isReadable(socketIndex) { try receiveFromBroker() }
                if let monitorIndex, poller.isReadable(monitorIndex) { try watchHandshakes() }
                try perform(machine.tick(now: now))
            }
        }
        shutdown()
        return machine.exitCode ?? 0
    }

    /// Carries out the machine's actions, in order.
    func perform(_ actions: [WorkerAction]) throws {
        for action in actions {
            switch action {
            case .connect:
                try connect()
            case .disconnect:
                socket = nil
                monitor = nil
            case .send(let output):
                send(message(output))
            case .startEngine:
                logger.info("starting engine", metadata: ["engine": "\(engine.name)", "model": "\(options.model)"])
                do {
                    try engine.start()
                } catch {
                    try perform(machine.engineStartFailed(reason: "\(error)", now: now))
                }
            case .stopEngine:
                engine.stop()
            case .submit(let job):
                engine.submit(job)
            case .cancel(let batchID, let attempt):
                engine.cancel(batchID: batchID, attempt: attempt)
            case .event(let event):
                log(event)
            }
        }
    }

    func handleEngine(_ event: EngineEvent) throws {
        let t = now
        switch event {
        case .ready(let detail, let capacity):
            try perform(machine.engineReady(detail: detail, capacity: capacity, now: t))
        case .progress(let id, let attempt, let done, let total):
            try perform(machine.engineProgress(batchID: id, attempt: attempt, done: done, total: total, now: t))
        case .finished(let id, let attempt, let payload, let stats):
            try perform(machine.engineFinished(batchID: id, attempt: attempt, payload: payload, stats: stats, now: t))
        case .failed(let id, let attempt, let code, let retryable, let message):
            try perform(machine.engineFailed(batchID: id, attempt: attempt, code: code, retryable: retryable, message: message, now: t))
        case .died(let code, let message):
            try perform(machine.engineDied(code: code, message: message, now: t))
        }
    }

    /// Stops the engine and lets the last messages (results, BYE) leave before the socket closes.
    func shutdown() {
        engine.stop()
        if let socket {
            try? socket.set(.linger(milliseconds: 2000))
        }
        socket = nil
        logger.info("worker stopped", metadata: ["completed": "\(machine.completed)", "engine_restarts": "\(machine.restarts)"])
    }
}
