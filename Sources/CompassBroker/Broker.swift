import CompassJournal
import CompassProtocol
import CompassScheduler
import CompassSecurity
import CompassSystem
import CompassWire
import Foundation
import Logging
import ZMQ

/// The broker: one thread, one poll loop, two ROUTER sockets (producers on the frontend, workers
/// on the backend), and the pure `Scheduler` deciding everything. This class only moves bytes:
/// it decodes and validates frames, calls the scheduler with the time, and sends what it returns.
///
/// Create it on the thread that will call `run`; its sockets never leave that thread.
public final class Broker {
    public let options: BrokerOptions
    let logger: Logger
    let frontend: ZMQSocket
    let backend: ZMQSocket
    /// The endpoints actually bound (wildcard ports resolved).
    public let frontendEndpoint: String
    public let backendEndpoint: String
    var scheduler: Scheduler<Frame>
    /// What each worker said in READY, and its latest heartbeat figures.
    var capabilities: [PeerID: WorkerCapabilities] = [:]
    var heartbeatStats: [PeerID: WorkerHeartbeatStats] = [:]
    let startedAt = MonotonicClock.nanoseconds()
    /// Random per process: producers compare it to notice a broker restart.
    public let instanceID = String(UInt64.random(in: 0...UInt64.max), radix: 16)
    var badInput = LogLimiter()
    /// CURVE handshakes refused so far.
    public internal(set) var refusals = 0
    var metrics = BrokerMetrics()
    /// Completed requests per pool, sampled every second for the last 10 s (the STATUS rate).
    var rateSamples: [String: [(at: UInt64, completed: Int)]] = [:]
    var lastMetrics: UInt64 = 0
    /// Follow-up actions produced while carrying out others (e.g. a send found a peer gone).
    var pending: [SchedulerAction<Frame>] = []
    /// With a journal: this turn's records, and the messages that wait for them to be committed.
    let journal: Journal?
    var journalOperations: [JournalOperation<Frame>] = []
    var outbox: [Outgoing] = []
    /// Where messages are read into: frames that nothing kept are reused for the next message.
    var receiveBuffer = ReceiveBuffer()

    /// The authenticator of CURVE handshakes (nil in plaintext).
    let zap: ZAPHandler?
    var lastAllowlistCheck: UInt64 = 0
    /// Connection events of the backend: a dropped worker connection is probed for at once.
    let backendMonitor: SocketMonitor?
    /// Ticks that still probe every worker after a backend disconnect (libzmq may take a moment to
    /// retire the dead peer's pipe, so the first probe can still be queued to it).
    var probesLeft = 0
    /// Whether the last turn read every message the backend held (probes wait until it has).
    var backendDrained = true

    enum Outgoing {
        case worker(PeerID, BrokerWorkerMessage)
        case producer(PeerID, ProducerReply)
    }
    let jsonEncoder = JSONEncoder()
    let jsonDecoder = JSONDecoder()

    public init(options: BrokerOptions, context: ZMQContext, logger: Logger) throws {
        self.options = options
        self.logger = logger
        var config = options.scheduler
        if let path = options.journalPath {
            let journal = try Journal(path: path, durability: options.journalDurability)
            self.journal = journal
            config.journaling = true
            scheduler = Scheduler(config: config, format: JSONPayloadFormat())
            let snapshots: [BatchSnapshot<Frame>] = try journal.load()
            scheduler.restore(snapshots, now: Timestamp(nanoseconds: MonotonicClock.nanoseconds()))
            let finished = snapshots.filter { $0.outcome != nil }.count
            logger.info("journal opened", metadata: ["path": "\(path)", "durability": "\(options.journalDurability.rawValue)",
                                                     "recovered_queued": "\(snapshots.count - finished)", "recovered_finished": "\(finished)"])
        } else {
            journal = nil
            scheduler = Scheduler(config: config, format: JSONPayloadFormat())
        }
        if let curve = options.curve {
            // The ZAP handler must be bound before a CURVE socket sees its first handshake.
            zap = try ZAPHandler(context: context, producers: try curve.producers.map(Allowlist.init(path:)),
                                 workers: try curve.workers.map(Allowlist.init(path:)))
        } else {
            zap = nil
        }
        frontend = try context.socket(.router)
        backend = try context.socket(.router)
        if let curve = options.curve {
            try frontend.set(curve.socketOptions(domain: ZAPHandler.producerDomain))
            try backend.set(curve.socketOptions(domain: ZAPHandler.workerDomain))
        }
        for (socket, hwm) in [(frontend, options.frontendSendHighWaterMark), (backend, options.backendSendHighWaterMark)] {
            try socket.set([
                .routerMandatory(true),
                .routerHandover(true),
                .sendHighWaterMark(hwm),
                .receiveHighWaterMark(options.receiveHighWaterMark),
                .maxMessageSize(options.maxMessageBytes),
                .linger(milliseconds: 1000),
            ])
        }
        try frontend.bind(options.frontend)
        try backend.bind(options.backend)
        frontendEndpoint = try frontend.lastEndpoint
        backendEndpoint = try backend.lastEndpoint
        backendMonitor = try SocketMonitor(backend, context: context)
        jsonEncoder.outputFormatting = [.sortedKeys]
    }

    var now: Timestamp { Timestamp(nanoseconds: MonotonicClock.nanoseconds()) }

    /// Runs until SIGTERM or SIGINT arrives on `signals`: then stops accepting, delivers what it
    /// can within `shutdownGraceMilliseconds`, and returns.
    public func run(signals: SignalWatcher?, shutdownGraceMilliseconds: UInt64 = 0) throws {
        let poller = ZMQPoller()
        let frontendIndex = poller.add(frontend)
        let backendIndex = poller.add(backend)
        let signalIndex = signals.map { poller.add(fd: $0.fd) }
        let zapIndex = zap.map { poller.add($0.socket) }
        let monitorIndex = backendMonitor.map { poller.add($0.socket) }
        if let zap {
            logger.info("CURVE on both sockets", metadata: [
                "producer_allowlist": "\(zap.producers?.summary ?? "none: any key")",
                "worker_allowlist": "\(zap.workers?.summary ?? "none: any key")"])
            for (role, list) in [("producer", zap.producers), ("worker", zap.workers)] {
                guard let list else { continue }
                if list.keys.isEmpty { logger.warning("the \(role) allowlist \(list.path) holds no key: every \(role) will be refused") }
                for problem in list.skipped { logger.warning("\(role) allowlist \(list.path): ignored \(problem)") }
            }
        }
        let tickMilliseconds = max(5, min(50, options.scheduler.heartbeatMilliseconds / 4))
        var nextTick = MonotonicClock.milliseconds() + tickMilliseconds
        var stopAt: UInt64?
        logger.info("broker ready", metadata: ["frontend": "\(frontendEndpoint)", "backend": "\(backendEndpoint)",
                                                "heartbeat_ms": "\(options.scheduler.heartbeatMilliseconds)",
                                                "liveness": "\(options.scheduler.liveness)"])
        while true {
            let nowMs = MonotonicClock.milliseconds()
            if let stopAt, nowMs >= stopAt || scheduler.unfinishedCount == 0 { break }
            let wait = nextTick > nowMs ? Int(nextTick - nowMs) : 0
            try poller.poll(timeoutMilliseconds: wait)
            if let signalIndex, poller.isReadable(signalIndex), let signals {
                let received = signals.drain()
                if received.contains(SIGHUP), let zap {
                    for note in zap.reload() { logger.info("SIGHUP: \(note)") }
                }
                for sig in received where sig == SIGTERM || sig == SIGINT {
                    if stopAt != nil {
                        logger.warning("second \(signalName(sig)): stopping now")
                        return
                    }
                    logger.info("\(signalName(sig)): refusing new batches and shutting down",
                                metadata: ["unfinished": "\(scheduler.unfinishedCount)"])
                    scheduler.stopAccepting()
                    stopAt = MonotonicClock.milliseconds() + shutdownGraceMilliseconds
                }
            }
            if let zapIndex, poller.isReadable(zapIndex) { try authenticate() }
            var dropped = false
            if let monitorIndex, poller.isReadable(monitorIndex), let backendMonitor {
                dropped = try backendMonitor.events().contains(.disconnected)
            }
            backendDrained = try drainBoth(frontendReady: poller.isReadable(frontendIndex),
                                           backendReady: poller.isReadable(backendIndex) || dropped)
            if dropped {
                // What the gone worker sent before it went (a draining worker's last RESULT) is
                // read above, before the probe declares it lost: otherwise that result would
                // arrive for an attempt already given up on and be dropped as stale.
                if backendDrained { execute(scheduler.probeWorkers(now: now)) }
                probesLeft = 3
            }
            if MonotonicClock.milliseconds() >= nextTick {
                execute(scheduler.tick(now: now))
                if probesLeft > 0 && backendDrained {
                    probesLeft -= 1
                    execute(scheduler.probeWorkers(now: now))
                }
                nextTick = MonotonicClock.milliseconds() + tickMilliseconds
                if MonotonicClock.milliseconds().since(lastMetrics) >= 1000 {
                    lastMetrics = MonotonicClock.milliseconds()
                    refreshMetrics()
                }
                if let zap, MonotonicClock.milliseconds().since(lastAllowlistCheck) >= 1000 {
                    lastAllowlistCheck = MonotonicClock.milliseconds()
                    for note in zap.reload(onlyIfChanged: true) { logger.info("allowlist changed: \(note)") }
                }
            }
            try endTurn()
        }
        logger.info("broker stopped", metadata: ["unfinished": "\(scheduler.unfinishedCount)"])
    }

    /// Answers CURVE handshakes; every refusal is logged with the peer's address and key.
    func authenticate() throws {
        guard let zap else { return }
        for decision in try zap.answer() {
            if decision.admitted {
                logger.debug("CURVE key admitted", metadata: ["domain": "\(decision.domain)", "address": "\(decision.address)", "key": "\(decision.publicKey)"])
            } else {
                refusals += 1
                metrics.refused(domain: decision.domain)
                badInput.warning(logger, "CURVE handshake refused", metadata: [
                    "domain": "\(decision.domain)", "address": "\(decision.address)", "key": "\(decision.publicKey)", "reason": "\(decision.reason)"])
            }
        }
    }

    func refreshMetrics() {
        let gpus = heartbeatStats.map { id, stats in
            (worker: id.description, gpus: (stats.gpus ?? []).map { (index: $0.index, usedMiB: $0.memoryUsedMiB, totalMiB: $0.memoryTotalMiB, utilization: $0.utilizationPercent) })
        }
        let snapshot = scheduler.snapshot(now: now)
        metrics.refresh(snapshot, workerGPUs: gpus)
        let at = MonotonicClock.milliseconds()
        for pool in snapshot.pools {
            rateSamples[pool.name, default: []].append((at, pool.counters.completedRequests))
            rateSamples[pool.name]!.removeAll { at.since($0.at) > 10_000 }
        }
    }

    /// Handles waiting messages of both sockets in alternating rounds of up to 32 each (512 each
    /// at most per poll turn), so a flood of SUBMITs cannot hold back the RESULTs that complete
    /// batches, nor the reverse. Returns whether the backend has nothing more waiting.
    func drainBoth(frontendReady: Bool, backendReady: Bool) throws -> Bool {
        var frontendOpen = frontendReady, backendOpen = backendReady
        for _ in 0..<16 {
            if frontendOpen { frontendOpen = try drain(frontend, 32, handleFrontend, refuseFrontend) }
            if backendOpen { backendOpen = try drain(backend, 32, handleBackend, refuseBackend) }
            if !frontendOpen && !backendOpen { return true }
        }
        return !backendOpen
    }

    /// Handles up to `limit` waiting messages of one socket; true when it may hold more. A message
    /// past the per-message bounds (frames, bytes for its command) goes to `refuse` with its first
    /// frames only: the rest is released as it is read, never decoded.
    func drain(_ socket: ZMQSocket, _ limit: Int, _ handle: ([Frame]) -> Void, _ refuse: ([Frame], ProtocolError) -> Void) throws -> Bool {
        let maxPayloadBytes = options.maxPayloadBytes
        // The buffer, moved out of `self` while it is read into (and back: no copy).
        var buffer = ReceiveBuffer(spareLimit: 0)
        swap(&buffer, &receiveBuffer)
        defer { swap(&buffer, &receiveBuffer) }
        for _ in 0..<limit {
            // A message handled, its frames that nothing kept are emptied for the next one.
            defer { buffer.recycle() }
            // The bound is asked for after every frame; it is worked out once, when the command is in.
            var bound: Int?
            let received = try socket.receive(into: &buffer, dontWait: true, maxFrames: WireProtocol.maxFramesPerMessage) { frames in
                if let bound { return bound }
                // [routing id, header, command, ...]: the bound depends on the command once it is read.
                guard frames.count >= 3 else { return maxPayloadBytes + WireProtocol.messageHeadroomBytes }
                let commandBound = frames[2].count == 1
                    ? WireProtocol.maxMessageBytes(command: frames[2].withUnsafeBytes { $0[0] }, maxPayloadBytes: maxPayloadBytes)
                    : WireProtocol.maxControlMessageBytes
                bound = commandBound
                return commandBound
            }
            switch received {
            case nil:
                return false
            case .message?:
                handle(buffer.frames)
            case .oversized(let count, let bytes)?:
                let head = buffer.frames
                guard !head.isEmpty else { continue }
                let command = head.count >= 3 && head[2].count == 1 ? head[2].withUnsafeBytes { $0[0] } : nil
                let bound = command.map { WireProtocol.maxMessageBytes(command: $0, maxPayloadBytes: maxPayloadBytes) }
                    ?? maxPayloadBytes + WireProtocol.messageHeadroomBytes
                let what = command.map { "a message with command 0x\(String($0, radix: 16))" } ?? "a message"
                refuse(head, ProtocolError(.badFrame, count > WireProtocol.maxFramesPerMessage
                    ? "\(what) of \(count) frames; a message has at most \(WireProtocol.maxFramesPerMessage) frames (read and dropped unparsed)"
                    : "\(what) of \(bytes) bytes over \(count) frames exceeds the limit of \(bound) bytes for the whole message (read and dropped unparsed)"))
            }
        }
        return true
    }

    /// Encodes a value as a JSON frame.
    func jsonFrame<T: Encodable>(_ value: T) -> Frame {
        Frame(bytes: (try? jsonEncoder.encode(value)) ?? Data("{}".utf8))
    }
}
