import CompassEngines
import CompassProtocol
import CompassSystem
import CompassWire
import DequeModule
import Foundation
import Logging
import ZMQ

/// A worker: owns one engine (one TP group), registers it with the broker, and runs the batches
/// the broker sends, one at a time, with `credit - 1` more waiting so the engine never idles.
///
/// One thread, one poll loop over the broker socket, the engine's event fd and the signal pipe.
/// Create it on the thread that calls `run`.
public final class Worker {
    public let options: WorkerOptions
    let logger: Logger
    let context: ZMQContext
    let engine: any Engine
    let host: String
    let gpuInfo: () -> [GPUInfo]

    // Connection
    var socket: ZMQSocket?
    var monitor: SocketMonitor?
    var incarnation = 0
    var identity = ""
    var registered = false
    var lastHeard: UInt64 = 0
    var lastSent: UInt64 = 0
    var heartbeatMilliseconds: UInt64
    var liveness: UInt64
    var reconnectDelay: UInt64
    var connectAt: UInt64?

    // Work
    var queue: Deque<EngineJob> = []
    /// Batches inside the engine, oldest first (at most `engineCapacity`).
    var running: [EngineJob] = []
    var engineCapacity = 1
    /// Forward progress of the engine: the last progress, result or failure while it had work.
    var lastProgress: UInt64 = 0
    var lastProgressSent: UInt64 = 0
    var completed = 0

    // Engine
    var engineReady = false
    var engineStartedAt: UInt64 = 0
    var restartAt: UInt64?
    var restartDelay: UInt64
    var startFailures = 0
    var restarts = 0

    // Shutdown
    var drainingSince: UInt64?
    var exitCode: Int32?

    public init(options: WorkerOptions, context: ZMQContext, engine: any Engine, logger: Logger,
                gpuInfo: @escaping () -> [GPUInfo] = { [] }) {
        self.options = options
        self.context = context
        self.engine = engine
        self.logger = logger
        self.gpuInfo = gpuInfo
        heartbeatMilliseconds = options.heartbeatMilliseconds
        liveness = options.liveness
        reconnectDelay = options.reconnectMinMilliseconds
        restartDelay = options.restartMinMilliseconds
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count)
        host = String(decoding: name.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    var now: UInt64 { MonotonicClock.milliseconds() }

    /// Runs until drained (SIGTERM/SIGINT) or until the engine cannot be started; returns the exit code.
    public func run(signals: SignalWatcher?) throws -> Int32 {
        try startEngine()
        while exitCode == nil {
            let poller = ZMQPoller()
            let engineIndex = poller.add(fd: engine.eventFD)
            let signalIndex = signals.map { poller.add(fd: $0.fd) }
            let socketIndex = socket.map { poller.add($0) }
            let monitorIndex = monitor.map { poller.add($0.socket) }
            let current = socket
            // Poll until the socket changes (connect, reconnect) or the worker is done.
            while exitCode == nil && socket === current {
                try poller.poll(timeoutMilliseconds: 50)
                if let signalIndex, poller.isReadable(signalIndex), let signals {
                    for sig in signals.drain() where sig == SIGTERM || sig == SIGINT { handleSignal(sig) }
                }
                if poller.isReadable(engineIndex) {
                    for event in engine.takeEvents() { handleEngine(event) }
                }
                if let socketIndex, poller.isReadable(socketIndex) { try receiveFromBroker() }
                if let monitorIndex, poller.isReadable(monitorIndex) { watchHandshakes() }
                try timers()
            }
        }
        shutdown()
        return exitCode ?? 0
    }

    // MARK: Connection

    func connect() throws {
        incarnation += 1
        identity = "w-\(host)-\(getpid())-\(incarnation)"
        let s = try context.socket(.dealer)
        try s.set([
            .routingID(Array(identity.utf8)),
            .linger(milliseconds: 0),
            .reconnectInterval(milliseconds: 100),
            .reconnectIntervalMax(milliseconds: Int32(options.reconnectMaxMilliseconds)),
            .receiveHighWaterMark(10_000),
            .sendHighWaterMark(10_000),
        ])
        if let curve = options.curve { try s.set(curve.socketOptions) }
        monitor = try SocketMonitor(s, context: context)
        try s.connect(options.broker)
        socket = s
        registered = false
        lastHeard = now
        connectAt = nil
        sendReady()
        logger.info("connecting to broker", metadata: ["broker": "\(options.broker)", "worker": "\(identity)", "pool": "\(options.pool)"])
    }

    /// Batches the broker may send ahead: enough to keep the engine full plus one waiting.
    var credit: Int { max(options.credit, engineCapacity + 1) }

    /// READY announces the credit still free: batches still running from before count as held.
    func sendReady() {
        let caps = WorkerCapabilities(
            pool: options.pool, tp: options.tp, gpus: gpuInfo(), model: options.model, engine: engine.name,
            maxBatch: options.maxBatch, credit: max(0, credit - running.count), pid: getpid(),
            host: host, version: compassVersion)
        send(.ready(capabilities: Frame(bytes: (try? JSONEncoder().encode(caps)) ?? Data("{}".utf8))))
    }

    /// A refused handshake will not get better by retrying: say why and exit (status 4).
    func watchHandshakes() {
        for event in (try? monitor?.events()) ?? [] {
            let reason: String
            switch event {
            case .authenticationFailed(let status):
                reason = "the broker refused this worker's CURVE key (ZAP status \(status)): is its public key in the broker's worker allowlist?"
            case .handshakeFailed(let code):
                reason = options.curve == nil
                    ? "the handshake with the broker failed (errno \(code)): it probably requires CURVE; pass --curve-server-key and --curve-key"
                    : "the CURVE handshake with the broker failed (errno \(code)): is --curve-server-key the broker's public key?"
            default:
                continue
            }
            logger.critical("\(reason)")
            exitCode = 4
        }
    }

    /// Drops the connection and plans a new one after the backoff delay. Batches not started are
    /// dropped (the broker requeues them); a running one finishes and its result is sent later.
    func reconnect(_ reason: String) {
        logger.warning("lost the broker; reconnecting", metadata: ["reason": "\(reason)", "in_ms": "\(reconnectDelay)"])
        socket = nil
        monitor = nil
        registered = false
        queue.removeAll()
        connectAt = now + reconnectDelay
        reconnectDelay = min(reconnectDelay * 2, options.reconnectMaxMilliseconds)
    }

    func send(_ message: WorkerMessage) {
        guard let socket else { return }
        do {
            if try socket.send(message.encode(), dontWait: true) { lastSent = now }
        } catch {
            logger.error("send to broker failed", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Timers

    func timers() throws {
        let t = now
        if let connectAt, t >= connectAt, engineReady || !running.isEmpty, drainingSince == nil { try connect() }
        if socket != nil {
            if t.since(lastSent) >= heartbeatMilliseconds {
                let stats = WorkerHeartbeatStats(gpus: options.gpus.isEmpty ? nil : gpuInfo(), engineRestarts: restarts)
                send(.heartbeat(stats: Frame(bytes: (try? JSONEncoder().encode(stats)) ?? Data())))
            }
            if t.since(lastHeard) > heartbeatMilliseconds * liveness {
                reconnect("no message from the broker for \(t.since(lastHeard)) ms")
            }
        }
        if !engineReady, restartAt == nil, t.since(engineStartedAt) > options.startupTimeoutMilliseconds {
            engineFailedToStart("the engine was not ready within \(options.startupTimeoutMilliseconds) ms")
        }
        if let restartAt, t >= restartAt {
            self.restartAt = nil
            try startEngine()
        }
        if let job = running.first, engineReady, options.progressTimeoutMilliseconds > 0,
           t.since(lastProgress) > options.progressTimeoutMilliseconds {
            logger.error("engine made no progress; killing it", metadata: [
                "batch": "\(job.batchID)", "stalled_ms": "\(t.since(lastProgress))"])
            engine.stop()
            engineDied(code: .timeout, message: "no progress for \(options.progressTimeoutMilliseconds) ms (watchdog)")
        }
        if let since = drainingSince {
            if running.isEmpty {
                exitCode = 0
            } else if t.since(since) > options.drainMilliseconds {
                logger.warning("drain time over; handing back the running batch")
                handBackRunning()
                exitCode = 0
            }
        }
    }
}
