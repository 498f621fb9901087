import CompassEngines
import CompassProtocol
import CompassSystem
import CompassWire
import Foundation
import ZMQ

extension Worker {
    /// A new connection with a new identity: the broker treats it as a new worker.
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
        logger.info("connecting to broker", metadata: ["broker": "\(options.broker)", "worker": "\(identity)", "pool": "\(options.pool)"])
    }

    func receiveFromBroker() throws {
        while let socket, let frames = try socket.receive(dontWait: true) {
            let message: BrokerWorkerMessage
            do {
                message = try BrokerWorkerMessage.decode(frames[...])
            } catch {
                logger.warning("bad message from the broker", metadata: ["error": "\(error)"])
                try perform(machine.brokerHeartbeat(now: now)) // a message all the same: the broker is alive
                continue
            }
            try handle(message)
        }
    }

    func handle(_ message: BrokerWorkerMessage) throws {
        let t = now
        switch message {
        case .welcome(let settings):
            let welcome = try? settings.withUnsafeBytes { try JSONDecoder().decode(WorkerWelcome.self, from: Data($0)) }
            try perform(machine.welcome(heartbeatMilliseconds: welcome?.heartbeatMilliseconds, liveness: welcome?.liveness,
                                        creditMode: welcome?.creditMode, now: t))
        case .batch(let id, let attempt, let meta, let payload):
            try perform(machine.batch(EngineJob(batchID: id, attempt: attempt, meta: meta, payload: payload.bytes), now: t))
        case .cancel(let id, let attempt):
            try perform(machine.cancel(batchID: id, attempt: attempt, now: t))
        case .heartbeat:
            try perform(machine.brokerHeartbeat(now: t))
        case .disconnect(let reason):
            try perform(machine.disconnected(reason: reason, now: t))
        }
    }

    /// The wire message for a machine's output, with what only this process knows.
    func message(_ output: ToBroker) -> WorkerMessage {
        switch output {
        case .ready(let credit, let capacity):
            let caps = WorkerCapabilities(
                pool: options.pool, tp: options.tp, gpus: gpuInfo(), model: options.model, engine: engine.name,
                maxBatch: options.maxBatch, credit: credit, pid: getpid(), host: host, version: compassVersion,
                creditMode: .explicit, capacity: capacity.sequences, capacityTokens: capacity.tokens)
            return .ready(capabilities: json(caps))
        case .credit(let n):
            return .credit(UInt32(n))
        case .progress(let id, let attempt, let done, let total):
            return .progress(batchID: id, attempt: attempt, done: done, total: total)
        case .result(let id, let attempt, let payload, let stats):
            return .result(batchID: id, attempt: attempt, stats: json(stats), payload: Frame(bytes: payload))
        case .failed(let id, let attempt, let code, let retryable, let text):
            return .failed(batchID: id, attempt: attempt, code: code.rawValue, retryable: retryable, message: text,
                           partial: Frame(bytes: [UInt8]()))
        case .heartbeat:
            let stats = WorkerHeartbeatStats(gpus: options.gpus.isEmpty ? nil : gpuInfo(), engineRestarts: machine.restarts)
            return .heartbeat(stats: json(stats))
        case .bye(let reason):
            return .bye(reason: reason)
        }
    }

    func json(_ value: some Encodable) -> Frame {
        Frame(bytes: (try? JSONEncoder().encode(value)) ?? Data("{}".utf8))
    }

    func send(_ message: WorkerMessage) {
        guard let socket else { return }
        do {
            _ = try socket.send(message.encode(), dontWait: true)
        } catch {
            logger.error("send to broker failed", metadata: ["error": "\(error)"])
        }
    }

    /// A refused handshake will not get better by retrying: the machine ends the worker (status 4).
    func watchHandshakes() throws {
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
            try perform(machine.handshakeRefused(reason))
        }
    }
}
