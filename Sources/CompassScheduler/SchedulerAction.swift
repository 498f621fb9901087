import CompassProtocol

/// What the scheduler asks its I/O layer to send or note. Payloads pass through unread.
public enum SchedulerAction<Payload> {
    case toWorker(PeerID, WorkerOutput<Payload>)
    case toProducer(PeerID, ProducerOutput<Payload>)
    /// Something worth a log line and a metric.
    case event(SchedulerEvent)
    /// A record to make durable before this turn's messages are sent (journaling only).
    case journal(JournalOperation<Payload>)
}

public enum WorkerOutput<Payload> {
    /// `creditMode`: whether RESULT and FAILED return this worker's credit (the mode its READY asked for).
    case welcome(workerID: String, creditMode: CreditMode)
    case batch(batchID: String, attempt: UInt32, meta: BatchMeta, payload: Payload)
    case cancel(batchID: String, attempt: UInt32)
    case heartbeat
    case disconnect(reason: String)
}

public enum ProducerOutput<Payload> {
    case welcome(session: String, pendingResults: Int)
    case accepted(batchID: String)
    case rejected(batchID: String, code: RejectCode, message: String, retryAfterMilliseconds: UInt32)
    case progress(batchID: String, done: UInt32, total: UInt32)
    case result(batchID: String, attempts: UInt32, stats: Payload, payload: Payload)
    case failed(batchID: String, attempts: UInt32, code: AnyFailureCode, message: String, partial: Payload?)
    case heartbeat
}

/// Notable state changes, for logs and metrics.
public enum SchedulerEvent: Sendable, Equatable {
    case workerRegistered(worker: PeerID, pool: String, credit: Int)
    case workerLost(worker: PeerID, pool: String, reason: String, requeued: Int)
    case workerLeft(worker: PeerID, pool: String)
    case requeued(batchID: String, attempt: UInt32, code: AnyFailureCode, reason: String)
    case completed(batchID: String, pool: String, attempts: UInt32, latencyMilliseconds: UInt64)
    case failed(batchID: String, pool: String, code: AnyFailureCode, message: String)
    case staleDropped(batchID: String, worker: PeerID, attempt: UInt32)
    case unknownWorker(worker: PeerID)
    case rejected(code: RejectCode, message: String)
    /// `session`: as logs show it (`SessionKey.description`).
    case resultExpired(batchID: String, session: String)
    /// A batch that kept killing engines was cut in halves (depth: how many times so far).
    case split(batchID: String, requests: Int, depth: Int, kills: UInt32, code: AnyFailureCode)
    /// Requests of a split batch failed alone (the poison), the rest of the batch goes on.
    case isolated(batchID: String, requests: Int, code: AnyFailureCode, message: String)
}
