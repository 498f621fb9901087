import CompassProtocol

/// The scheduler's settings; the broker fills them from its command line or topology.
public struct SchedulerConfig: Sendable {
    /// Heartbeat interval in both directions.
    public var heartbeatMilliseconds: UInt64 = UInt64(WireProtocol.defaultHeartbeatMilliseconds)
    /// Missed intervals after which a worker is declared dead.
    public var liveness: UInt64 = UInt64(WireProtocol.defaultLiveness)
    /// Attempts per batch when its SUBMIT does not say.
    public var defaultMaxAttempts: UInt16 = WireProtocol.defaultMaxAttempts
    /// Pools accepted before any worker registers for them. A pool a worker registers for is added.
    public var declaredPools: Set<String> = []
    /// Bytes a pool may hold: payloads queued or running plus results not yet acknowledged.
    public var maxPoolBytes: Int = WireProtocol.defaultMaxPoolBytes
    /// Bytes one producer session may hold, all pools together: the payloads of its batches
    /// (queued, running, or finished and not yet acknowledged) plus their results. Beyond it only
    /// that session's SUBMITs get `busy`, so a producer that never ACKs fills its own share, not
    /// the pool. nil: a share of the pool, `maxPoolBytes / WireProtocol.defaultSessionShareDivisor`.
    public var maxSessionBytes: Int?
    /// Batches a pool may hold in its queue.
    public var maxQueuedBatches: Int = 100_000
    /// How long a worker may hold one dispatch before it is taken back (0 = no lease).
    public var leaseMilliseconds: UInt64 = 0
    /// How long a worker that said BYE may take to finish before its batches are taken back.
    public var drainMilliseconds: UInt64 = 60_000
    /// How long a session that holds no batches may stay silent (no HELLO, ACK or HEARTBEAT)
    /// before it is forgotten: a producer that exited (`compass status`, a finished run) leaves
    /// nothing behind. A live producer heartbeats well within it; one forgotten anyway loses
    /// nothing (it holds no batches) and its next HELLO starts the session again.
    public var idleSessionMilliseconds: UInt64 = 60_000
    /// How long a result waits for its producer's ACK before it is dropped.
    public var resultRetentionMilliseconds: UInt64 = 3_600_000
    /// Largest credit a worker may hold (a READY or CREDIT beyond it is capped).
    public var maxCredit: Int = 1024
    /// Dispatches of removed workers remembered so that their late answers return credit.
    public var maxOrphanedDispatches: Int = 65_536
    /// Acknowledged batch ids remembered (the last this many ACKed, with a hash of each payload),
    /// so a late duplicate SUBMIT is refused instead of re-run. An id ACKed longer ago than that,
    /// or before a broker restart, is new again.
    public var rememberedAcks: Int = WireProtocol.defaultRememberedAcks
    /// Failure codes that mean "this batch may have killed its engine or worker".
    public var killCodes: Set<FailureCode> = [.engineDead, .workerLost, .timeout, .oom]
    /// Kills after which a batch of several requests is split in halves (a split half, already
    /// suspect, is split again after one), and a single request is reported failed.
    public var splitAfterKills: UInt32 = 2
    /// How deep splitting may go (2^16 requests is beyond any batch).
    public var maxSplitDepth = 16
    /// Attempts per pool, overriding `defaultMaxAttempts` (a SUBMIT's own value wins over both).
    public var poolMaxAttempts: [String: UInt16] = [:]
    /// Placement by affinity key (`Scheduler+Affinity.swift`): a worker takes a keyed batch as its
    /// key's choice only while it runs fewer than this many times the pool's mean batches per
    /// worker; 0 turns placement by key off (keyed batches go round-robin like any other).
    public var affinityLoadFactor: Double = 1.25
    /// Emit `.journal` actions for the broker to make durable.
    public var journaling = false

    public init() {}

    /// The bytes one session may hold: `maxSessionBytes`, else its default share of the pool.
    public var sessionByteLimit: Int { maxSessionBytes ?? maxPoolBytes / WireProtocol.defaultSessionShareDivisor }

    /// A worker is dead after this long without a message.
    public var expiryMilliseconds: UInt64 { heartbeatMilliseconds * liveness }
}
