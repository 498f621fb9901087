import CompassProtocol
import CompassSystem
import Foundation
import Synchronization
import ZMQ

/// Submits batches to a compass broker and returns each batch's outcome exactly once.
///
/// Safe to use from many tasks at once. A background thread owns the socket; it heartbeats,
/// reconnects when the broker goes silent (re-saying HELLO and re-submitting what is outstanding,
/// which SUBMIT's idempotency makes safe), backs off on `busy`, and ACKs every outcome.
public final class CompassClient: Sendable {
    public let options: ClientOptions
    let inbox: Inbox
    private let finished = DispatchSemaphore(value: 0)

    public init(options: ClientOptions, context: ZMQContext? = nil) throws {
        self.options = options
        let ctx = try context ?? ZMQContext()
        let inbox = Inbox(wakeup: try WakeupEvent())
        self.inbox = inbox
        let done = finished
        let opts = options
        // The socket is created on, and never leaves, this thread.
        let thread = Thread {
            do {
                let loop = try ClientLoop(options: opts, context: ctx, inbox: inbox)
                loop.run()
            } catch {
                inbox.failAll(with: error)
            }
            done.signal()
        }
        thread.name = "compass-client"
        thread.start()
    }

    deinit {
        inbox.post(.close)
        finished.wait()
    }

    /// Submits one batch and waits for its RESULT or FAILED. Throws `ClientError.rejected` when the
    /// broker refuses it for good (a `busy` refusal is retried here, with backoff, until accepted).
    /// Cancelling the calling task sends CANCEL; the outcome is then `failed(code: "cancelled")`.
    public func submit(batchID: String, pool: String, payload: [UInt8], meta: BatchMeta = BatchMeta()) async throws -> BatchOutcome {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                inbox.post(.submit(Submission(batchID: batchID, pool: pool, meta: meta, payload: payload, continuation: continuation)))
            }
        } onCancel: {
            inbox.post(.cancel(batchID))
        }
    }

    /// Encodes `requests` as one batch, submits it, and returns its per-request results in order.
    ///
    /// - Parameter affinity: the batch's affinity key (`BatchMeta.affinity`; 0: none), usually
    ///   `AffinityKey.of(requests)`, so batches sharing a long prefix run on one worker.
    public func submit(_ requests: [InferenceRequest], pool: String, batchID: String = UUID().uuidString.lowercased(),
                       maxAttempts: UInt16 = 0, priority: Int16 = 0, deadlineMilliseconds: UInt32 = 0,
                       affinity: UInt64 = 0) async throws -> BatchOutcome {
        // Sorted keys: the same requests encode to the same bytes in every process, so a re-SUBMIT
        // after a restart (`compass submit --resume`) is the same SUBMIT, not `payload_mismatch`.
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let payload = [UInt8](try encoder.encode(requests))
        let meta = BatchMeta(requestCount: UInt32(requests.count), maxAttempts: maxAttempts, priority: priority,
                             deadlineMilliseconds: deadlineMilliseconds, affinity: affinity)
        return try await submit(batchID: batchID, pool: pool, payload: payload, meta: meta)
    }

    /// Asks the broker for its STATUS document (JSON); throws `ClientError.timedOut` when no answer
    /// comes within `timeoutSeconds` (a broker that is down does not answer at all).
    public func status(timeoutSeconds: Double = 10) async throws -> [UInt8] {
        try await withCheckedThrowingContinuation { continuation in
            inbox.post(.status(continuation, deadline: MonotonicClock.milliseconds() + UInt64(max(0, timeoutSeconds) * 1000)))
        }
    }

    /// Asks the broker to cancel a batch.
    public func cancel(batchID: String) {
        inbox.post(.cancel(batchID))
    }

    /// Tells the broker the outcome of `batchID` is stored and may be forgotten (with `manualAck`).
    public func ack(batchID: String) {
        inbox.post(.ack(batchID))
    }

    /// Stops the client; outstanding submits fail with `ClientError.closed`.
    public func close() {
        inbox.post(.close)
    }
}

struct Submission: Sendable {
    let batchID: String
    let pool: String
    let meta: BatchMeta
    let payload: [UInt8]
    let continuation: CheckedContinuation<BatchOutcome, any Error>
}

enum Command: Sendable {
    case submit(Submission)
    case cancel(String)
    case ack(String)
    case status(CheckedContinuation<[UInt8], any Error>, deadline: UInt64)
    case close
}

/// Commands from callers to the client thread: a locked list plus an eventfd that wakes its poll.
final class Inbox: Sendable {
    private let commands = Mutex<[Command]>([])
    /// Set once the client thread has ended: why later commands fail at once.
    private let closedBecause = Mutex<(any Error)?>(nil)
    let wakeup: WakeupEvent

    init(wakeup: WakeupEvent) { self.wakeup = wakeup }

    func post(_ command: Command) {
        let refusal: (any Error)? = closedBecause.withLock { reason in
            if let reason { return reason }
            commands.withLock { $0.append(command) }
            return nil
        }
        if let refusal { Inbox.reject(command, refusal) } else { wakeup.signal() }
    }

    func take() -> [Command] {
        wakeup.clear()
        return commands.withLock { list in
            let out = list
            list.removeAll()
            return out
        }
    }

    /// Marks the inbox closed and fails every command still in it.
    func failAll(with error: any Error) {
        closedBecause.withLock { if $0 == nil { $0 = error } }
        for command in take() { Inbox.reject(command, error) }
    }

    static func reject(_ command: Command, _ error: any Error) {
        switch command {
        case .submit(let s): s.continuation.resume(throwing: error)
        case .status(let c, _): c.resume(throwing: error)
        case .cancel, .ack, .close: break
        }
    }
}
