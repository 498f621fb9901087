import CompassProtocol
import CompassSystem // UInt64.since
import DequeModule

/// Every decision of a producer client, as a pure state machine: callers' commands, the broker's
/// replies, handshake events and the time (milliseconds of a monotonic clock) go in,
/// `ClientAction`s come out. Nothing here touches a socket, a thread or a clock, so all of it is
/// unit-tested (Tests/CompassClientTests); `ClientLoop` is the socket loop around it.
///
/// What it decides:
/// - **Submits**: refused at once when the handshake was refused, the payload is over the broker's
///   limit, or the batch id is already outstanding here; claimed at once from an outcome the broker
///   re-sent before anyone asked (a resumed producer); otherwise SUBMIT and wait.
/// - **Refusals** (`+Broker`): `busy` and `shutting_down` are retried with doubling backoff and
///   jitter (or fail at once without `retryBusy`); `unknown_pool` with a hint waits for the pool,
///   bounded; `session_required` says HELLO and re-submits, three times at most; `unknown_batch`
///   (the answer to a CANCEL) leaves the batch awaited, and a cancel is sent again once the broker
///   ACCEPTs the batch's re-SUBMIT; others are final.
/// - **Outcomes** (`+Broker`): each reaches its caller once, then is ACKed (unless `manualAck`);
///   a replay of one already delivered (or claimed) is ACKed again and dropped; one nobody awaits
///   is kept (bounded) for a later submit of its id.
/// - **Liveness**: HEARTBEAT after a heartbeat interval of silence from us; a new socket, HELLO and
///   every outstanding batch again after `heartbeat × liveness` of silence from the broker; HELLO
///   and every outstanding batch again when another broker process answers (it restarted).
/// - **STATUS** queries, answered in order, each failing at its deadline; the late replies of
///   those that timed out are dropped, not given to the next query (`lateStatusReplies`).
/// - **Handshakes**: a refused key, or three failed handshakes in a row, fail everything waiting and
///   every later submit until a handshake succeeds.
///
/// Invariants (`checkInvariants`, checked after every step in tests): every caller waits in one
/// place at most (an outstanding batch or a STATUS query), never twice; a batch is outstanding or
/// unclaimed, never both; nothing waits once the handshake is refused or the client is closed; the
/// remembered outcomes stay within their bounds and their order lists.
struct ClientStateMachine {
    let options: ClientOptions

    /// A batch submitted and not yet answered to its caller.
    struct Outstanding: Sendable {
        let submission: BatchSubmission
        let caller: CallerID
        var accepted = false
        /// When to send SUBMIT again after `busy` (nil: not waiting).
        var retryAt: UInt64?
        var busyCount = 0
        /// When the broker first answered `unknown_pool` for it (nil: not waiting for its pool).
        var poolWaitSince: UInt64?
        /// `session_required` answers so far: each is followed by a HELLO and a re-SUBMIT.
        var sessionRetries = 0
        /// A caller asked to cancel it: CANCEL was sent.
        var cancelling = false
        /// Send CANCEL again when the broker next ACCEPTs the batch: the broker did not know it
        /// (`unknown_batch`: a restarted broker that lost it, before our re-SUBMIT re-created it), or
        /// the CANCEL may have been lost with the old socket or broker process.
        var cancelAgain = false
    }

    struct StatusWaiter: Sendable, Equatable {
        let caller: CallerID
        let deadline: UInt64
        /// Its request went out before a broker restart we heard of since, and may have been lost
        /// with the old process: timing out, it owes no late reply.
        var requestMayBeLost = false
    }

    /// Why the last handshake failed; submits fail at once while it is set.
    var refused: String?
    /// Handshakes failed in a row (an allowlist refusal fails at once instead).
    var handshakeFailures = 0
    var lastHeard: UInt64 = 0
    var lastSent: UInt64 = 0
    var outstanding: [String: Outstanding] = [:]
    /// Pools batches are waiting for (their workers have not registered yet), each announced once:
    /// a pool leaves when a batch of it is accepted or no batch waits for it any more.
    var waitingPools: Set<String> = []
    /// Say HELLO before the next re-SUBMITs: the broker did not know this connection's session.
    var helloBeforeRetry = false
    var statusWaiters: [StatusWaiter] = []
    /// STATUS replies still owed to queries that timed out. The protocol's STATUS carries no request
    /// id; the broker answers a connection's STATUS requests in order, one reply each, so the next
    /// replies that arrive belong to those queries: that many are dropped before a reply answers
    /// the oldest waiting query. Forgotten with the socket (`reconnected`: the old one's replies
    /// never come) and when another broker process answers (what the old one owed is lost). A
    /// request libzmq dropped (its queue full while the broker is away) owes a reply that never
    /// comes: the new socket that a silent broker brings forgets it.
    var lateStatusReplies = 0
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
    /// Set by `close`: every caller has been answered and nothing more is sent.
    var closed = false
    /// Jitter for retries, so that many clients refused together do not come back together.
    var random: SplitMix64

    var out: [ClientAction] = []

    /// How many delivered batch ids, and unclaimed outcomes, are remembered.
    static let rememberedOutcomes = 100_000
    /// `session_required` answers a batch may get before the refusal is final.
    static let maxSessionRetries = 3

    /// - Parameter seed: the retry jitter's generator (the I/O layer passes a random one).
    init(options: ClientOptions, seed: UInt64) {
        self.options = options
        random = SplitMix64(state: seed)
    }

    /// Collects the actions emitted by `body`.
    mutating func collect(_ body: (inout ClientStateMachine) -> Void) -> [ClientAction] {
        body(&self)
        let actions = out
        out.removeAll(keepingCapacity: true)
        return actions
    }

    mutating func emit(_ action: ClientAction) { out.append(action) }

    /// Sends to the broker (nothing once closed).
    mutating func send(_ message: ClientMessage, _ now: UInt64) {
        guard !closed else { return }
        lastSent = now
        emit(.send(message))
    }

    /// HELLO counts as hearing from the broker: its answer (and the re-sent results) gets a full
    /// liveness period to arrive.
    mutating func hello(_ now: UInt64) {
        lastHeard = now
        send(.hello(session: options.session), now)
    }

    // MARK: Start and callers' commands

    /// The client's first step, on its first socket: HELLO.
    mutating func start(now: UInt64) -> [ClientAction] {
        collect { m in m.hello(now) }
    }

    /// A caller submits a batch and waits for its outcome.
    mutating func submit(_ submission: BatchSubmission, caller: CallerID, now: UInt64) -> [ClientAction] {
        collect { m in
            let id = submission.batchID
            if m.closed {
                m.emit(.fail(caller, .closed))
            } else if let refused = m.refused {
                m.emit(.fail(caller, .unauthorized(refused)))
            } else if let outcome = m.unclaimed.removeValue(forKey: id) {
                // Claimed: delivered, so a replay of it is ACKed rather than kept again. (A scan of
                // the order list; claims mostly come in the order the outcomes arrived, near its front.)
                if let index = m.unclaimedOrder.firstIndex(of: id) { m.unclaimedOrder.remove(at: index) }
                m.rememberDelivered(id)
                if !m.options.manualAck { m.send(.ack(batchID: id), now) }
                m.emit(.complete(caller, outcome))
            } else if submission.payload.count > m.maxPayloadBytes {
                m.emit(.fail(caller, .rejected(code: RejectCode.tooLarge.rawValue,
                    message: "payload of \(submission.payload.count) bytes exceeds the broker's limit of \(m.maxPayloadBytes) bytes; split the batch")))
            } else if m.outstanding[id] != nil {
                m.emit(.fail(caller, .rejected(code: RejectCode.duplicate.rawValue, message: "batch \(id) is already outstanding in this client")))
            } else {
                m.outstanding[id] = Outstanding(submission: submission, caller: caller)
                m.send(.submit(submission), now)
            }
        }
    }

    /// A caller cancels a batch (its task was cancelled, or `cancel(batchID:)`): CANCEL if it is
    /// outstanding here; the outcome (`failed cancelled`, or the result if it was too late) follows.
    /// The caller keeps waiting for that outcome: a cancel never answers it by itself. A cancel
    /// outlives a broker restart and a new socket: when the broker answers `unknown_batch` (it lost
    /// the batch, and our re-SUBMIT re-creates it) or the CANCEL may have been lost, it is sent
    /// again once the broker ACCEPTs the re-SUBMIT, so the batch still ends `failed cancelled` and
    /// is not left at the broker with nobody to ACK it.
    mutating func cancel(batchID: String, now: UInt64) -> [ClientAction] {
        collect { m in
            guard m.outstanding[batchID] != nil else { return }
            m.outstanding[batchID]?.cancelling = true
            m.send(.cancel(batchID: batchID), now)
        }
    }

    /// A caller acknowledges an outcome it has stored (`manualAck`).
    mutating func ack(batchID: String, now: UInt64) -> [ClientAction] {
        collect { m in m.send(.ack(batchID: batchID), now) }
    }

    /// A caller asks for the broker's STATUS, until `deadline`.
    mutating func status(caller: CallerID, deadline: UInt64, now: UInt64) -> [ClientAction] {
        collect { m in
            if m.closed {
                m.emit(.fail(caller, .closed))
            } else if let refused = m.refused {
                m.emit(.fail(caller, .unauthorized(refused)))
            } else {
                m.statusWaiters.append(StatusWaiter(caller: caller, deadline: deadline))
                m.send(.status, now)
            }
        }
    }

    /// The client is closed: every caller still waiting fails with `closed`, and later ones at once.
    mutating func close() -> [ClientAction] {
        collect { m in
            m.failAll(.closed)
            m.helloBeforeRetry = false
            m.closed = true
        }
    }

    /// Fails every outstanding batch and STATUS query with `error`.
    mutating func failAll(_ error: ClientError) {
        for id in outstanding.keys.sorted() { emit(.fail(outstanding[id]!.caller, error)) }
        outstanding.removeAll()
        waitingPools.removeAll()
        for waiter in statusWaiters { emit(.fail(waiter.caller, error)) }
        statusWaiters.removeAll()
    }

    // MARK: Timers

    /// Timers: the HELLO a `session_required` asked for, SUBMITs due again, STATUS deadlines,
    /// heartbeats, and the broker's liveness.
    mutating func tick(now: UInt64) -> [ClientAction] {
        collect { m in m.timers(now) }
    }

    mutating func timers(_ now: UInt64) {
        guard !closed else { return }
        if helloBeforeRetry {
            helloBeforeRetry = false
            hello(now)
        }
        let due = outstanding.compactMap { id, o in o.retryAt.map { now >= $0 } == true ? id : nil }
        for id in due.sorted() {  // in id order: replayable (see resubmitOutstanding)
            guard let o = outstanding[id] else { continue }
            outstanding[id]?.retryAt = nil
            send(.submit(o.submission), now)
        }
        if statusWaiters.contains(where: { now >= $0.deadline }) {
            for waiter in statusWaiters where now >= waiter.deadline {
                emit(.fail(waiter.caller, .timedOut("the broker's STATUS at \(options.broker)")))
                if !waiter.requestMayBeLost { lateStatusReplies += 1 }
            }
            statusWaiters.removeAll { now >= $0.deadline }
        }
        if now.since(lastSent) >= options.heartbeatMilliseconds { send(.heartbeat, now) }
        if now.since(lastHeard) > options.heartbeatMilliseconds * options.liveness {
            emit(.reconnect)
        }
    }
}

