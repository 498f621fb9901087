/// The compass wire protocol, version 1: every constant that both ends must agree on.
///
/// A message is a ZeroMQ multipart message. After the routing frames a ROUTER adds, frame 0 is the
/// 8-byte protocol header `"compass" + version`, frame 1 is one command byte, and the command's
/// frames follow. Integers are unsigned big-endian in frames of their exact width. Strings are UTF-8.
/// The batch payload is one opaque frame (JSON) that the broker forwards without decoding.
/// docs/protocol.md is the same contract written for implementers in other languages.
public enum WireProtocol {
    /// The ASCII signature at the start of frame 0.
    public static let signature: [UInt8] = Array("compass".utf8)
    /// The protocol version this build speaks, the last byte of frame 0.
    public static let version: UInt8 = 1
    /// Frame 0 of every message: signature + version.
    public static let header: [UInt8] = signature + [version]

    /// Default interval between heartbeats, in milliseconds (both directions).
    public static let defaultHeartbeatMilliseconds: UInt32 = 1000
    /// Default number of missed heartbeat intervals after which a peer is declared dead.
    public static let defaultLiveness: UInt32 = 3

    /// Limits on header fields, enforced by the broker before anything is stored.
    public static let maxBatchIDBytes = 256
    /// Batch ids between broker and workers may carry a suffix per split (`~0`, `~1`) of poison isolation.
    public static let maxDispatchIDBytes = maxBatchIDBytes + 2 * 16
    public static let maxPoolNameBytes = 64
    public static let maxSessionBytes = 128
    public static let maxCodeBytes = 64
    public static let maxMessageTextBytes = 4096
    /// Largest batch payload the broker accepts by default (64 MiB); beyond it SUBMIT is REJECTED.
    public static let defaultMaxPayloadBytes = 64 << 20
    /// Default per-batch attempt limit when neither the SUBMIT nor the pool sets one.
    public static let defaultMaxAttempts: UInt16 = 3
    /// The most credit a worker may hold at the broker (batches sent ahead of its next CREDIT).
    /// The broker clamps at it, so a worker that grants credit explicitly never grants past it.
    public static let maxCredit = 1024

    /// The most frames one message may have, the routing id a ROUTER adds included (the longest
    /// message, a worker's FAILED, has 9). A message with more is refused `bad_frame` unread.
    public static let maxFramesPerMessage = 16
    /// The most bytes one message may have, all frames together, unless it is a SUBMIT, RESULT or
    /// FAILED (the messages that carry a payload): a READY, HEARTBEAT or any other control message
    /// over it is refused `bad_frame` before its fields are decoded.
    public static let maxControlMessageBytes = 64 << 10
    /// Room for the header frames of a message that carries a payload, beyond the payload limit.
    public static let messageHeadroomBytes = 1 << 20
    /// The nesting limit of a JSON document (payloads, results): deeper is refused.
    public static let maxJSONDepth = 64
    /// Sessions listed in STATUS (`scheduler.sessions`); `scheduler.sessions_total` counts them all.
    public static let maxStatusSessions = 1000
    /// Bytes a pool may hold by default (`compass-broker --max-pool-bytes`): payloads queued or
    /// running plus results not yet acknowledged.
    public static let defaultMaxPoolBytes = 1 << 30
    /// A session's share of a pool's bytes by default: one part in this many of the pool's limit
    /// (`compass-broker --session-max-bytes` sets it in bytes).
    public static let defaultSessionShareDivisor = 4
    /// Acknowledged batch ids a broker remembers by default (the last ones ACKed), so that a late
    /// re-SUBMIT of one is refused instead of run again (`compass-broker --remembered-acks`).
    public static let defaultRememberedAcks = 65_536

    /// The most bytes a whole message (all its frames) may have, given its command byte: a SUBMIT,
    /// RESULT or FAILED may carry a payload of up to `maxPayloadBytes` plus headroom for its other
    /// frames; every other message, known command or not, is a control message.
    public static func maxMessageBytes(command: UInt8, maxPayloadBytes: Int) -> Int {
        switch command {
        case ProducerCommand.submit.rawValue, WorkerCommand.result.rawValue, WorkerCommand.failed.rawValue:
            return maxPayloadBytes + messageHeadroomBytes
        default:
            return maxControlMessageBytes
        }
    }

    /// Sessions whose text starts with this are the broker's own: a connection that has not said
    /// HELLO has the session `anon:` + its routing id (STATUS, logs and the journal show it so).
    /// A HELLO naming such a session is refused `bad_frame`, or a peer could name another
    /// connection's anonymous session and collect its results.
    public static let reservedSessionPrefix = "anon:"
    /// The character that joins a batch id and the index of a half cut from it by poison isolation
    /// (`b~0`, `b~1`, as workers see them). A producer's batch id may not contain it (SUBMIT is
    /// refused `bad_frame`), so no batch a producer names is ever a half of another.
    public static let splitSeparator: Character = "~"

    /// Why a HELLO's session cannot be taken, or nil when it can.
    public static func helloSessionProblem(_ session: String) -> String? {
        guard session.hasPrefix(reservedSessionPrefix) else { return nil }
        return "session '\(session)' starts with '\(reservedSessionPrefix)', which is reserved for the broker's anonymous sessions; "
            + "choose another session id"
    }

    /// Why a SUBMIT's batch id cannot be taken, or nil when it can.
    public static func submitBatchIDProblem(_ batchID: String) -> String? {
        // Over the contiguous bytes (a native string's): the generic `utf8.contains` steps through
        // the view's index machinery, about 1,000 instructions for a short id, on every SUBMIT.
        let separator = UInt8(ascii: "~")
        guard batchID.utf8.withContiguousStorageIfAvailable({ $0.contains(separator) }) ?? batchID.utf8.contains(separator) else { return nil }
        return "batch id '\(batchID)' contains '\(splitSeparator)', which is reserved for the halves the broker cuts from a batch; "
            + "choose a batch id without it"
    }

    /// Whether `name` is a valid pool name: 1-64 bytes of `[A-Za-z0-9._-]`.
    public static func isValidPoolName(_ name: String) -> Bool {
        let utf8 = name.utf8
        guard !utf8.isEmpty, utf8.count <= maxPoolNameBytes else { return false }
        return utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
                || b == 0x2e || b == 0x5f || b == 0x2d
        }
    }
}

/// Commands a producer sends to the broker's frontend.
public enum ProducerCommand: UInt8, Sendable, CaseIterable {
    /// [session]: bind this connection to a session; the broker re-sends the session's unacked results.
    case hello = 0x01
    /// [batch id, pool, meta(16), payload]: queue a batch. Idempotent per batch id.
    case submit = 0x02
    /// [batch id]: cancel a queued or running batch.
    case cancel = 0x03
    /// [batch id]: the producer has stored the batch's RESULT or FAILED; the broker forgets it.
    case ack = 0x04
    /// []: ask for a STATUS reply.
    case status = 0x05
    /// []: keep-alive; answered with HEARTBEAT.
    case heartbeat = 0x06
}

/// Commands the broker sends to a producer.
public enum BrokerReply: UInt8, Sendable, CaseIterable {
    /// [session, info JSON]: answer to HELLO.
    case welcome = 0x81
    /// [batch id]: the batch is queued (and journaled, when a journal is configured).
    case accepted = 0x82
    /// [batch id, code, message, retry after ms (u32)]: the message was refused; nothing was queued.
    case rejected = 0x83
    /// [batch id, done (u32), total (u32)]: requests of a running batch completed so far.
    case progress = 0x84
    /// [batch id, attempts (u32), stats JSON, payload]: the batch's results.
    case result = 0x85
    /// [batch id, attempts (u32), code, message, partial payload]: the batch failed for good.
    case failed = 0x86
    /// [status JSON]: answer to STATUS.
    case status = 0x87
    /// [broker id]: answer to a producer HEARTBEAT. The id is random per broker process: a producer
    /// that sees it change knows the broker restarted, says HELLO again and re-submits what it awaits.
    case heartbeat = 0x88
}

/// Commands a worker sends to the broker's backend.
public enum WorkerCommand: UInt8, Sendable, CaseIterable {
    /// [capabilities JSON]: register for a pool (see `WorkerCapabilities`).
    case ready = 0x11
    /// [n (u32)]: grant n more credits (batches the broker may send ahead).
    case credit = 0x12
    /// [batch id, attempt (u32), done (u32), total (u32)]
    case progress = 0x13
    /// [batch id, attempt (u32), stats JSON, payload]. Returns one credit.
    case result = 0x14
    /// [batch id, attempt (u32), code, retryable (u8), message, partial payload]. Returns one credit.
    case failed = 0x15
    /// [stats JSON or empty]: keep-alive carrying GPU health.
    case heartbeat = 0x16
    /// [reason]: take no more batches; the worker finishes or hands back what it holds, then leaves.
    case bye = 0x17
}

/// Commands the broker sends to a worker.
public enum BrokerToWorker: UInt8, Sendable, CaseIterable {
    /// [settings JSON]: registration accepted (see `WorkerWelcome`).
    case welcome = 0x91
    /// [batch id, attempt (u32), meta(16), payload]
    case batch = 0x92
    /// [batch id, attempt (u32)]: stop working on this batch; no result is wanted.
    case cancel = 0x93
    /// []: keep-alive.
    case heartbeat = 0x94
    /// [reason]: the broker does not know this worker (e.g. it restarted); register again.
    case disconnect = 0x95
}

/// Why the broker refused a message (the `code` frame of REJECTED).
public enum RejectCode: String, Sendable, CaseIterable {
    case badFrame = "bad_frame"
    case badVersion = "bad_version"
    case unknownCommand = "unknown_command"
    case unknownPool = "unknown_pool"
    case badPayload = "bad_payload"
    case tooLarge = "too_large"
    case busy = "busy"
    case duplicate = "duplicate"
    case unknownBatch = "unknown_batch"
    case shuttingDown = "shutting_down"
    /// A connection that has not said HELLO re-submitted a batch id of a named session: say HELLO
    /// with your session, then re-SUBMIT (a reconnected socket may deliver queued SUBMITs first).
    case sessionRequired = "session_required"
    /// The batch id is known (held, or recently acknowledged) with another payload or pool: a batch
    /// id names one batch; choose a new id for new work.
    case payloadMismatch = "payload_mismatch"
}

/// Why a batch or a request failed (the `code` of FAILED and of a per-request error).
public enum FailureCode: String, Sendable, CaseIterable, Codable {
    /// The engine process died while running the batch.
    case engineDead = "engine_dead"
    /// The engine ran out of (GPU) memory.
    case oom = "oom"
    /// No forward progress within the watchdog time, a lease expired, or the batch's deadline passed.
    case timeout = "timeout"
    /// The request or payload is invalid; retrying cannot help.
    case badRequest = "bad_request"
    /// The worker holding the batch vanished (crash, SIGKILL, network).
    case workerLost = "worker_lost"
    /// The producer cancelled the batch.
    case cancelled = "cancelled"
    /// The engine did not become ready within its startup deadline.
    case startupFailed = "startup_failed"
    /// A draining worker gave back a batch it had not started; does not count as an attempt.
    case handedBack = "handed_back"
    /// Any other engine error.
    case engineError = "engine_error"

    /// Whether a batch that failed this way may be retried on another worker by default.
    public var retryableByDefault: Bool {
        switch self {
        case .engineDead, .oom, .timeout, .workerLost, .startupFailed, .handedBack, .engineError: true
        case .badRequest, .cancelled: false
        }
    }
}

extension WireProtocol {
    /// Checks the bytes of frame 0: the signature, then the version.
    public static func checkHeader(_ b: UnsafeRawBufferPointer) throws(ProtocolError) {
        guard b.count == header.count, signature.indices.allSatisfy({ b[$0] == signature[$0] }) else {
            throw ProtocolError(.badFrame, "frame 0 must be the 8-byte header \"compass\" + version byte")
        }
        guard b[signature.count] == version else {
            throw ProtocolError(.badVersion, "protocol version \(b[signature.count]) is not supported; this broker speaks version \(version)")
        }
    }
}
