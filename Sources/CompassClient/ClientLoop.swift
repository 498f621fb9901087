import CompassProtocol
import CompassSecurity
import CompassSystem
import CompassWire
import Foundation
import ZMQ

/// The client's thread: owns the DEALER socket and the callers' continuations. Every decision is
/// `ClientStateMachine`'s; this is its I/O: one poll loop over the socket, the callers' inbox and
/// the handshake monitor, feeding commands, replies and the clock to the machine and carrying out
/// the actions it returns.
final class ClientLoop {
    let options: ClientOptions
    let context: ZMQContext
    let inbox: Inbox
    var socket: ZMQSocket
    var monitor: SocketMonitor
    var incarnation = 0
    var machine: ClientStateMachine
    /// Who waits for what: the machine names callers, the continuations stay here.
    var submits: [CallerID: CheckedContinuation<BatchOutcome, any Error>] = [:]
    var statuses: [CallerID: CheckedContinuation<[UInt8], any Error>] = [:]
    var nextCaller: UInt64 = 0
    var running = true

    init(options: ClientOptions, context: ZMQContext, inbox: Inbox) throws {
        self.options = options
        self.context = context
        self.inbox = inbox
        socket = try ClientLoop.makeSocket(context, options, incarnation: 0)
        monitor = try SocketMonitor(socket, context: context)
        machine = ClientStateMachine(options: options, seed: UInt64.random(in: 0...UInt64.max))
        perform(machine.start(now: now))
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
                if running && poller.isReadable(socketIndex) { receive() }
                if running { perform(machine.tick(now: now)) }
            }
        }
        inbox.failAll(with: ClientError.closed)
        perform(machine.close()) // a no-op after `.close`, which closed the machine already
    }

    func handle(_ command: Command) {
        let t = now
        switch command {
        case .submit(let s):
            let caller = newCaller()
            submits[caller] = s.continuation
            let batch = BatchSubmission(batchID: s.batchID, pool: s.pool, meta: s.meta, payload: s.payload)
            perform(machine.submit(batch, caller: caller, now: t))
        case .cancel(let id):
            perform(machine.cancel(batchID: id, now: t))
        case .ack(let id):
            perform(machine.ack(batchID: id, now: t))
        case .status(let continuation, let deadline):
            let caller = newCaller()
            statuses[caller] = continuation
            perform(machine.status(caller: caller, deadline: deadline, now: t))
        case .close:
            running = false
            perform(machine.close())
        }
    }

    func newCaller() -> CallerID {
        nextCaller += 1
        return CallerID(raw: nextCaller)
    }

    /// Carries out the machine's actions, in order.
    func perform(_ actions: [ClientAction]) {
        for action in actions {
            switch action {
            case .send(let message):
                // DEALER queues while the broker is away; a full queue means a reconnect is near anyway.
                _ = try? socket.send(encode(message), dontWait: true)
            case .reconnect:
                reconnect()
            case .complete(let caller, let outcome):
                submits.removeValue(forKey: caller)?.resume(returning: outcome)
            case .answerStatus(let caller, let json):
                statuses.removeValue(forKey: caller)?.resume(returning: json)
            case .fail(let caller, let error):
                if let c = submits.removeValue(forKey: caller) { c.resume(throwing: error) }
                if let c = statuses.removeValue(forKey: caller) { c.resume(throwing: error) }
            case .notify(.progress(let id, let done, let total)):
                options.onProgress?(id, done, total)
            case .notify(.busy(let id, let wait)):
                options.onBusy?(id, wait)
            case .notify(.waitingForPool(let pool, let message)):
                options.onWaitingForPool?(pool, message)
            }
        }
    }

    func encode(_ message: ClientMessage) -> [Frame] {
        switch message {
        case .hello(let session): ProducerRequest.hello(session: session).encode()
        case .submit(let s): ProducerRequest.submit(batchID: s.batchID, pool: s.pool, meta: s.meta, payload: Frame(bytes: s.payload)).encode()
        case .cancel(let id): ProducerRequest.cancel(batchID: id).encode()
        case .ack(let id): ProducerRequest.ack(batchID: id).encode()
        case .status: ProducerRequest.status.encode()
        case .heartbeat: ProducerRequest.heartbeat.encode()
        }
    }

    func receive() {
        while let frames = try? socket.receive(dontWait: true) {
            let reply = (try? ProducerReply.decode(frames[...])).map(Self.reply) ?? .unreadable
            perform(machine.received(reply, now: now))
        }
    }

    /// The machine's view of a reply: frames to bytes, WELCOME's info decoded.
    static func reply(_ reply: ProducerReply) -> FromBroker {
        switch reply {
        case .welcome(_, let info):
            guard let welcome = try? info.withUnsafeBytes({ try JSONDecoder().decode(ProducerWelcome.self, from: Data($0)) }) else {
                return .unreadable
            }
            return .welcome(brokerID: welcome.brokerID, maxPayloadBytes: welcome.maxPayloadBytes)
        case .accepted(let id): return .accepted(batchID: id)
        case .rejected(let id, let code, let message, let retryAfter):
            return .rejected(batchID: id, code: code, message: message, retryAfterMilliseconds: retryAfter)
        case .progress(let id, let done, let total): return .progress(batchID: id, done: done, total: total)
        case .result(let id, let attempts, let stats, let payload):
            return .outcome(BatchOutcome(batchID: id, attempts: attempts, status: .completed(payload: payload.bytes, stats: stats.bytes)))
        case .failed(let id, let attempts, let code, let message, let partial):
            return .outcome(BatchOutcome(batchID: id, attempts: attempts, status: .failed(code: code, message: message, partial: partial.bytes)))
        case .status(let json): return .status(json: json.bytes)
        case .heartbeat(let id): return .heartbeat(brokerID: id)
        }
    }

    func watchHandshakes() {
        for event in (try? monitor.events()) ?? [] {
            switch event {
            case .handshakeSucceeded: perform(machine.handshake(.succeeded, now: now))
            case .authenticationFailed(let status): perform(machine.handshake(.authenticationFailed(status: status), now: now))
            case .handshakeFailed(let code): perform(machine.handshake(.failed(errno: code), now: now))
            default: break
            }
        }
    }

    /// The broker went silent: a new connection (the machine then says HELLO and re-submits).
    func reconnect() {
        incarnation += 1
        guard let fresh = try? ClientLoop.makeSocket(context, options, incarnation: incarnation),
              let freshMonitor = try? SocketMonitor(fresh, context: context) else {
            perform(machine.reconnectFailed(now: now))
            return
        }
        socket = fresh
        monitor = freshMonitor
        perform(machine.reconnected(now: now))
    }
}
