import CompassProtocol

/// Names one caller's wait (a submit or a STATUS query): the state machine answers callers by this
/// id, and only the I/O layer holds the continuation behind it.
struct CallerID: Hashable, Sendable, CustomStringConvertible {
    let raw: UInt64
    var description: String { "#\(raw)" }
}

/// A batch as a caller submitted it: everything a SUBMIT (and every re-SUBMIT) carries.
struct BatchSubmission: Sendable, Equatable {
    var batchID: String
    var pool: String
    var meta: BatchMeta
    var payload: [UInt8]
}

/// What the client's state machine asks its I/O layer to do, in order.
enum ClientAction: Sendable {
    /// Send a message to the broker on the current socket (dropped if libzmq's queue is full).
    case send(ClientMessage)
    /// Replace the socket with a new one (a new routing id), then report `reconnected` or
    /// `reconnectFailed` to the machine.
    case reconnect
    /// Resume a submit's caller with its batch's outcome.
    case complete(CallerID, BatchOutcome)
    /// Resume a STATUS caller with the broker's document.
    case answerStatus(CallerID, [UInt8])
    /// Resume a caller (submit or STATUS) with an error.
    case fail(CallerID, ClientError)
    /// Tell the caller's callbacks (`ClientOptions.onProgress`, `onBusy`, `onWaitingForPool`).
    case notify(ClientEvent)
}

/// A message to the broker's frontend (the protocol's producer → broker table).
enum ClientMessage: Sendable, Equatable {
    case hello(session: String)
    case submit(BatchSubmission)
    case cancel(batchID: String)
    case ack(batchID: String)
    case status
    case heartbeat
}

/// A message from the broker, as the machine needs it (the I/O layer decodes the frames).
enum FromBroker: Sendable {
    /// WELCOME whose info decoded: the broker process's id and its payload limit.
    case welcome(brokerID: String, maxPayloadBytes: Int?)
    case accepted(batchID: String)
    case rejected(batchID: String, code: String, message: String, retryAfterMilliseconds: UInt32)
    case progress(batchID: String, done: UInt32, total: UInt32)
    /// RESULT or FAILED.
    case outcome(BatchOutcome)
    case status(json: [UInt8])
    case heartbeat(brokerID: String)
    /// A message that did not decode (or a WELCOME whose info did not): it still shows the broker is there.
    case unreadable
}

/// What the socket monitor saw of the security handshake.
enum HandshakeEvent: Sendable, Equatable {
    case succeeded
    /// The broker's ZAP handler refused this producer's key.
    case authenticationFailed(status: Int)
    /// The handshake failed (a mechanism or server key mismatch, or a broker stopping mid-handshake).
    case failed(errno: Int)
}

/// Things the caller's callbacks hear about.
enum ClientEvent: Sendable, Equatable {
    case progress(batchID: String, done: UInt32, total: UInt32)
    /// The broker answered `busy` (or `shutting_down`); the SUBMIT goes again after this wait.
    case busy(batchID: String, retryAfterMilliseconds: UInt32)
    /// A batch waits for the first worker of its pool (once per pool until a batch of it is
    /// accepted, or no batch waits for it any more).
    case waitingForPool(pool: String, message: String)
}
