import CompassProtocol
import CompassSecurity
import CompassSystem
import CompassWire
import DequeModule
import Foundation
import ZMQ

/// The client's thread: owns the DEALER socket and every outstanding batch.
final class ClientLoop {
    let options: ClientOptions
    let context: ZMQContext
    let inbox: Inbox
    var socket: ZMQSocket
    var monitor: SocketMonitor
    /// Why the last handshake failed; submits fail at once while it is set.
    var refused: String?
    /// Handshakes failed in a row (an allowlist refusal fails at once instead).
    var handshakeFailures = 0
    var incarnation = 0
    var lastHeard: UInt64 = 0
    var lastSent: UInt64 = 0

    struct Outstanding {
        let submission: Submission
        var accepted = false
        /// When to send SUBMIT again after `busy` (nil: not waiting).
        var retryAt: UInt64?
        var busyCount = 0
        /// When the broker first answered `unknown_pool` for it (nil: not waiting for its pool).
        var poolWaitSince: UInt64?
        /// `session_required` answers so far: each is followed by a HELLO and a re-SUBMIT.
        var sessionRetries = 0
    }
    /// Pools batches are waiting for (their workers have not registered yet).
    var waitingPools: Set<String> = []
    /// Say HELLO before the next re-SUBMITs: the broker did not know this connection's session.
    var helloBeforeRetry = false
    var outstanding: [String: Outstanding] = [:]
    var statusWaiters: [(continuation: CheckedContinuation<[UInt8], any Error>, deadline: UInt64)] = []
    /// The broker process we last heard from; a different one means it restarted.
    var brokerID: String?
    /// Outcomes the broker re-sent for this session (after HELLO) before anyone asked for them:
    /// a resumed producer claims them by submitting the same batch id, without re-running it.
    var unclaimed: [String: BatchOutcome] = [:]
    var unclaimedOrder: Deque<String> = []
    /// The broker's payload limit (from WELCOME; the protocol's default until then). A larger SUBMIT
    /// would make libzmq drop the connection, and a re-send would do it again: refuse it here.
    var maxPayloadBytes = WireProtocol.defaultMaxPayloadBytes
    /// Batches this client already delivered (bounded): a replay of one is acknowledged and dropped.
    var delivered: Set<String> = []
    var deliveredOrder: Deque<String> = []
    var running = true

    init(options: ClientOptions, context: ZMQContext, inbox: Inbox) throws {
        self.options = options
        self.context = context
        self.inbox = inbox
        socket = try ClientLoop.makeSocket(context, options, incarnation: 0)
        monitor = try SocketMonitor(socket, context: context)
        hello()
    }

    static func makeSocket(_ context: ZMQContext, _ options: ClientOptions, incarnation: Int) throws -> ZMQSocket {
        let s = try context.socket(.dealer)
        try s.set([
            .routingID(Array("p-\(getpid())-\(UInt32.random(in: 0...UInt32.max))-\(incarnation)".utf8)),
            .linger(milliseconds: 0),
            .reconnectInterval(milliseconds: 100),
            .reconnectIntervalMax(milliseconds: 2000),
            .sendHighWaterMark(100_000),
            .receiveHighWaterMark(100_000),
        ])
        if let curve = options.curve { try s.set(curve.socketOptions) }
        try s.connect(options.broker)
        return s
    }

    var now: UInt64 { MonotonicClock.milliseconds() }

    func send(_ request: ProducerRequest) {
        // DEALER queues while the broker is away; a full queue means a reconnect is near anyway.
        if (try? socket.send(request.encode(), dontWait: true)) == true { lastSent = now }
    }

    func hello() {
        lastHeard = now
        send(.hello(session: options.session))
    }

    func sendSubmit(_ s: Submission) {
        send(.submit(batchID: s.batchID, pool: s.pool, meta: s.meta, payload: Frame(bytes: s.payload)))
    }

    func run() {
        while running {
            let poller = ZMQPoller()
            let socketIndex = poller.add(socket)
            let inboxIndex = poller.add(fd: inbox.wakeup.fd)
            let monitorIndex = poller.add(monitor.socket)
            let current = socket
            while running && socket === current {
                _ = try? poller.poll(timeoutMilliseconds: 50)
                if poller.isReadable(monitorIndex) { watchHandshakes() }
                if poller.isReadable(inboxIndex) { for command in inbox.take() { handle(command) } }
                if poller.isReadable(socketIndex) { receive() }
                timers()
            }
        }
        inbox.failAll(with: ClientError.closed)
        for (_, o) in outstanding { o.submission.continuation.resume(throwing: ClientError.closed) }
        for waiter in statusWaiters { waiter.continuation.resume(throwing: ClientError.closed) }
        outstanding.removeAll()
        statusWaiters.removeAll()
    }

    func handle(_ command: Command) {
        switch command {
        case .submit(let s):
            if let refused {
                s.continuation.resume(throwing: ClientError.unauthorized(refused))
                return
            }
            if let outcome = unclaimed.removeValue(forKey: s.batchID) {
                if !options.manualAck { send(.ack(batchID: s.batchID)) }
                s.continuation.resume(returning: outcome)
                return
            }
            guard s.payload.count <= maxPayloadBytes else {
                s.continuation.resume(throwing: ClientError.rejected(code: RejectCode.tooLarge.rawValue,
                    message: "payload of \(s.payload.count) bytes exceeds the broker's limit of \(maxPayloadBytes) bytes; split the batch"))
                return
            }
            guard outstanding[s.batchID] == nil else {
                s.continuation.resume(throwing: ClientError.rejected(code: RejectCode.duplicate.rawValue,
                                                                     message: "batch \(s.batchID) is already outstanding in this client"))
                return
            }
            outstanding[s.batchID] = Outstanding(submission: s)
            sendSubmit(s)
        case .cancel(let id):
            if outstanding[id] != nil { send(.cancel(batchID: id)) }
        case .ack(let id):
            send(.ack(batchID: id))
        case .status(let c, let deadline):
            if let refused { c.resume(throwing: ClientError.unauthorized(refused)); return }
            statusWaiters.append((c, deadline))
            send(.status)
        case .close:
            running = false
        }
    }

    func receive() {
        while let frames = try? socket.receive(dontWait: true) {
            lastHeard = now
            guard let reply = try? ProducerReply.decode(frames[...]) else { continue }
            handle(reply)
        }
    }

    func handle(_ reply: ProducerReply) {
        switch reply {
        case .accepted(let id):
            outstanding[id]?.accepted = true
            if let pool = outstanding[id]?.submission.pool, !waitingPools.isEmpty { waitingPools.remove(pool) }
        case .rejected(let id, let code, let message, let retryAfter):
            guard var o = outstanding[id] else { return }
            if code == RejectCode.busy.rawValue && !options.retryBusy {
                outstanding[id] = nil
                o.submission.continuation.resume(throwing: ClientError.busy(message: message, retryAfterMilliseconds: retryAfter))
            } else if code == RejectCode.busy.rawValue || code == RejectCode.shuttingDown.rawValue {
                // Back off: the broker's hint, doubled per refusal, with jitter, capped.
                o.busyCount += 1
                let base = UInt64(max(retryAfter, 20)) << UInt64(min(o.busyCount - 1, 6))
                let wait = min(base, options.maxBusyBackoffMilliseconds) + UInt64.random(in: 0...20)
                o.retryAt = now + wait
                outstanding[id] = o
                options.onBusy?(id, UInt32(clamping: wait))
            } else if code == RejectCode.unknownPool.rawValue && retryAfter > 0 && options.unknownPoolWaitMilliseconds > 0
                        && now.since(o.poolWaitSince ?? now) < options.unknownPoolWaitMilliseconds {
                // A valid pool no worker has joined yet: wait for one, bounded.
                if o.poolWaitSince == nil { o.poolWaitSince = now }
                o.retryAt = now + min(UInt64(retryAfter), 1000) + UInt64.random(in: 0...50)
                outstanding[id] = o
                if waitingPools.insert(o.submission.pool).inserted { options.onWaitingForPool?(o.submission.pool, message) }
            } else if code == RejectCode.sessionRequired.rawValue && o.sessionRetries < 3 {
                // Our reconnected socket delivered this SUBMIT before a HELLO: say HELLO, then re-send.
                o.sessionRetries += 1
                o.retryAt = now
                helloBeforeRetry = true
                outstanding[id] = o
            } else {
                outstanding[id] = nil
                let waited = o.poolWaitSince.map { " (waited \(now.since($0) / 1000) s for a worker of pool '\(o.submission.pool)')" } ?? ""
                o.submission.continuation.resume(throwing: ClientError.rejected(code: code, message: message + waited))
            }
        case .progress(let id, let done, let total):
            if outstanding[id] != nil { options.onProgress?(id, done, total) }
        case .result(let id, let attempts, let stats, let payload):
            deliver(BatchOutcome(batchID: id, attempts: attempts, status: .completed(payload: payload.bytes, stats: stats.bytes)))
        case .failed(let id, let attempts, let code, let message, let partial):
            deliver(BatchOutcome(batchID: id, attempts: attempts, status: .failed(code: code, message: message, partial: partial.bytes)))
        case .status(let json):
            if !statusWaiters.isEmpty { statusWaiters.removeFirst().continuation.resume(returning: json.bytes) }
        case .welcome(_, let info):
            if let welcome = try? info.withUnsafeBytes({ try JSONDecoder().decode(ProducerWelcome.self, from: Data($0)) }) {
                if let limit = welcome.maxPayloadBytes { maxPayloadBytes = limit }
                noteBroker(welcome.brokerID)
            }
        case .heartbeat(let id):
            noteBroker(id)
        }
    }

    /// A refused handshake would otherwise look like a broker that never answers: fail what waits,
    /// with the reason, and keep failing new submits until a handshake succeeds.
    func watchHandshakes() {
        for event in (try? monitor.events()) ?? [] {
            switch event {
            case .handshakeSucceeded:
                refused = nil
                handshakeFailures = 0
            case .authenticationFailed(let status):
                let key = options.curve.map { " \($0.keys.publicKey)" } ?? ""
                refuse("the broker refused this producer's CURVE key\(key) (ZAP status \(status)): is that public key in a .pub file of "
                       + "the broker's producer allowlist? The broker logs the allowlist it read and the key it refused")
            case .handshakeFailed(let code):
                // One failure can be a broker stopping or starting mid-handshake; a mechanism or
                // server key mismatch fails every time.
                handshakeFailures += 1
                guard handshakeFailures >= 3 else { continue }
                refuse(options.curve == nil
                    ? "the handshake with the broker failed (errno \(code)): it probably requires CURVE; pass --curve-server-key and --curve-key"
                    : "the CURVE handshake with the broker failed (errno \(code)): is --curve-server-key the broker's public key?")
            default:
                break
            }
        }
    }

    func refuse(_ reason: String) {
        refused = reason
        for (_, o) in outstanding { o.submission.continuation.resume(throwing: ClientError.unauthorized(reason)) }
        outstanding.removeAll()
        for waiter in statusWaiters { waiter.continuation.resume(throwing: ClientError.unauthorized(reason)) }
        statusWaiters.removeAll()
    }

    /// Hands an outcome to whoever awaits it, once; keeps one nobody awaits yet (unacknowledged).
    func deliver(_ outcome: BatchOutcome) {
        let id = outcome.batchID
        guard let o = outstanding.removeValue(forKey: id) else {
            if delivered.contains(id) {
                send(.ack(batchID: id))
            } else if unclaimed[id] == nil {
                unclaimed[id] = outcome
                unclaimedOrder.append(id)
                if unclaimedOrder.count > 100_000 { unclaimed[unclaimedOrder.removeFirst()] = nil }
            }
            return
        }
        if !options.manualAck { send(.ack(batchID: id)) }
        delivered.insert(id)
        deliveredOrder.append(id)
        if deliveredOrder.count > 100_000 { delivered.remove(deliveredOrder.removeFirst()) }
        o.submission.continuation.resume(returning: outcome)
    }

    func timers() {
        let t = now
        if helloBeforeRetry {
            helloBeforeRetry = false
            hello()
        }
        for (id, o) in outstanding {
            if let at = o.retryAt, t >= at {
                outstanding[id]?.retryAt = nil
                sendSubmit(o.submission)
            }
        }
        if statusWaiters.contains(where: { t >= $0.deadline }) {
            for waiter in statusWaiters where t >= waiter.deadline {
                waiter.continuation.resume(throwing: ClientError.timedOut("the broker's STATUS at \(options.broker)"))
            }
            statusWaiters.removeAll { t >= $0.deadline }
        }
        if t.since(lastSent) >= options.heartbeatMilliseconds { send(.heartbeat) }
        if t.since(lastHeard) > options.heartbeatMilliseconds * options.liveness {
            reconnect()
        }
    }

    /// A broker that is not the one we knew has answered: it restarted and may have lost what it
    /// had accepted (without a journal). Say HELLO and re-submit everything still awaited.
    func noteBroker(_ id: String) {
        defer { brokerID = id }
        guard let known = brokerID, known != id else { return }
        hello()
        resubmitOutstanding()
    }

    func resubmitOutstanding() {
        for (id, o) in outstanding where o.retryAt == nil {
            outstanding[id]?.accepted = false
            sendSubmit(o.submission)
        }
    }

    /// The broker went silent: new connection, HELLO, and every outstanding batch again.
    func reconnect() {
        incarnation += 1
        guard let fresh = try? ClientLoop.makeSocket(context, options, incarnation: incarnation),
              let freshMonitor = try? SocketMonitor(fresh, context: context) else {
            lastHeard = now
            return
        }
        socket = fresh
        monitor = freshMonitor
        hello()
        resubmitOutstanding()
        for _ in statusWaiters { send(.status) } // their requests went out on the old socket
    }
}
