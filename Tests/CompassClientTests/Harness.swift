import CompassProtocol
import Testing
@testable import CompassClient

/// Drives a `ClientStateMachine` with a manual clock, records what it emits, checks its
/// invariants after every step, and checks that no caller is answered twice (as the worker's and
/// the scheduler's harnesses do). It plays the I/O layer's part in a reconnect: the new socket
/// comes (or, with `reconnectFails`, does not) and the machine hears so at once.
struct Harness {
    var machine: ClientStateMachine
    var now: UInt64 = 1_000
    var log: [ClientAction] = []
    var reconnectFails = false
    /// Every answer each caller got, in order (the harness expects one at most).
    var answers: [CallerID: [Answer]] = [:]
    var lastCaller: UInt64 = 0

    enum Answer: Equatable {
        case outcome(batchID: String, completed: Bool)
        case status([UInt8])
        case error(ClientError)
    }

    init(seed: UInt64 = 7, _ configure: (inout ClientOptions) -> Void = { _ in }) {
        var options = ClientOptions(broker: "tcp://broker", session: "s-test")
        options.heartbeatMilliseconds = 100
        options.liveness = 3
        configure(&options)
        machine = ClientStateMachine(options: options, seed: seed)
        step { m, t in m.start(now: t) }
    }

    @discardableResult
    mutating func step(_ body: (inout ClientStateMachine, UInt64) -> [ClientAction]) -> [ClientAction] {
        var actions = body(&machine, now)
        if actions.reconnects > 0 {
            actions += reconnectFails ? machine.reconnectFailed(now: now) : machine.reconnected(now: now)
        }
        log += actions
        for action in actions {
            switch action {
            case .complete(let caller, let outcome):
                let completed = if case .completed = outcome.status { true } else { false }
                answers[caller, default: []].append(.outcome(batchID: outcome.batchID, completed: completed))
            case .answerStatus(let caller, let json): answers[caller, default: []].append(.status(json))
            case .fail(let caller, let error): answers[caller, default: []].append(.error(error))
            default: break
            }
        }
        let twice = answers.filter { $0.value.count > 1 }
        #expect(twice.isEmpty, "answered more than once: \(twice)")
        let problems = machine.checkInvariants()
        #expect(problems.isEmpty, "invariants broken after \(actions): \(problems)")
        return actions
    }

    /// Moves the clock and ticks.
    @discardableResult
    mutating func advance(_ ms: UInt64) -> [ClientAction] {
        now += ms
        return step { m, t in m.tick(now: t) }
    }

    mutating func newCaller() -> CallerID {
        lastCaller += 1
        return CallerID(raw: lastCaller)
    }

    /// A caller submits `id`; returns the caller and the step's actions.
    @discardableResult
    mutating func submit(_ id: String, pool: String = "p", bytes: Int = 2) -> (caller: CallerID, actions: [ClientAction]) {
        let caller = newCaller()
        let actions = step { m, t in m.submit(Self.batch(id, pool: pool, bytes: bytes), caller: caller, now: t) }
        return (caller, actions)
    }

    @discardableResult
    mutating func status(timeout: UInt64 = 1_000) -> (caller: CallerID, actions: [ClientAction]) {
        let caller = newCaller()
        let deadline = now + timeout
        let actions = step { m, t in m.status(caller: caller, deadline: deadline, now: t) }
        return (caller, actions)
    }

    @discardableResult
    mutating func reply(_ reply: FromBroker) -> [ClientAction] {
        step { m, t in m.received(reply, now: t) }
    }

    @discardableResult
    mutating func result(_ id: String) -> [ClientAction] {
        reply(.outcome(Self.result(id)))
    }

    @discardableResult
    mutating func rejected(_ id: String, _ code: RejectCode, retryAfter: UInt32 = 0, message: String = "no") -> [ClientAction] {
        reply(.rejected(batchID: id, code: code.rawValue, message: message, retryAfterMilliseconds: retryAfter))
    }

    static func batch(_ id: String, pool: String = "p", bytes: Int = 2) -> BatchSubmission {
        BatchSubmission(batchID: id, pool: pool, meta: BatchMeta(requestCount: 1), payload: [UInt8](repeating: UInt8(ascii: "x"), count: bytes))
    }

    static func result(_ id: String) -> BatchOutcome {
        BatchOutcome(batchID: id, attempts: 1, status: .completed(payload: Array(id.utf8), stats: Array("{}".utf8)))
    }

    static func failed(_ id: String, _ code: String) -> BatchOutcome {
        BatchOutcome(batchID: id, attempts: 1, status: .failed(code: code, message: code, partial: []))
    }
}

/// Pattern helpers over actions.
extension Array where Element == ClientAction {
    var sent: [ClientMessage] { compactMap { if case .send(let m) = $0 { return m }; return nil } }

    /// Ids of the SUBMITs sent, in order.
    var submits: [String] { sent.compactMap { if case .submit(let s) = $0 { return s.batchID }; return nil } }
    var acks: [String] { sent.compactMap { if case .ack(let id) = $0 { return id }; return nil } }
    var cancels: [String] { sent.compactMap { if case .cancel(let id) = $0 { return id }; return nil } }
    var hellos: Int { sent.filter { if case .hello = $0 { return true }; return false }.count }
    var heartbeats: Int { sent.filter { $0 == .heartbeat }.count }
    var statusRequests: Int { sent.filter { $0 == .status }.count }
    var reconnects: Int { filter { if case .reconnect = $0 { return true }; return false }.count }

    /// The wire order, one word per message ("HELLO", "SUBMIT a", ...).
    var wire: [String] {
        sent.map {
            switch $0 {
            case .hello: "HELLO"
            case .submit(let s): "SUBMIT \(s.batchID)"
            case .cancel(let id): "CANCEL \(id)"
            case .ack(let id): "ACK \(id)"
            case .status: "STATUS"
            case .heartbeat: "HEARTBEAT"
            }
        }
    }

    /// Outcomes handed to callers: (caller, batch id).
    var completed: [(caller: CallerID, batchID: String)] {
        compactMap { if case .complete(let c, let o) = $0 { return (c, o.batchID) }; return nil }
    }

    var failures: [(caller: CallerID, error: ClientError)] {
        compactMap { if case .fail(let c, let e) = $0 { return (c, e) }; return nil }
    }

    var statusAnswers: [(caller: CallerID, json: [UInt8])] {
        compactMap { if case .answerStatus(let c, let j) = $0 { return (c, j) }; return nil }
    }

    var notifications: [ClientEvent] { compactMap { if case .notify(let e) = $0 { return e }; return nil } }
}
