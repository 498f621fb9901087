import CompassEngines
import CompassProtocol

/// What the worker's state machine asks its I/O layer to do, in order.
public enum WorkerAction: Sendable {
    /// Open a new connection to the broker (a new identity); the `send(.ready)` that follows goes on it.
    case connect
    /// Drop the connection to the broker.
    case disconnect
    /// Send a message to the broker (dropped when there is no connection).
    case send(ToBroker)
    /// Start the engine (a fresh generation); a failure to start comes back as `engineStartFailed`.
    case startEngine
    /// Stop the engine and everything it started.
    case stopEngine
    /// Hand a batch to the engine.
    case submit(EngineJob)
    /// Ask the engine to abandon a batch.
    case cancel(batchID: String, attempt: UInt32)
    /// Something worth a log line.
    case event(WorkerEvent)
}

/// A message to the broker, before the I/O layer adds what only it knows (GPU figures, host, pid).
public enum ToBroker: Sendable, Equatable {
    /// READY with the credit it grants; the worker always asks for explicit credit.
    case ready(credit: Int, capacity: EngineCapacity)
    case credit(Int)
    case progress(batchID: String, attempt: UInt32, done: UInt32, total: UInt32)
    case result(batchID: String, attempt: UInt32, payload: [UInt8], stats: ResultStats)
    case failed(batchID: String, attempt: UInt32, code: FailureCode, retryable: Bool, message: String)
    case heartbeat
    case bye(reason: String)
}

/// Notable state changes, for the log (the I/O layer words them; tests match on them).
public enum WorkerEvent: Sendable, Equatable {
    case connecting
    case registered(heartbeatMilliseconds: UInt64, creditMode: CreditMode)
    /// The broker's WELCOME did not confirm explicit credit: it returns credit with every result.
    case implicitCredit(window: Int)
    case brokerLost(reason: String, retryInMilliseconds: UInt64)
    /// The broker said DISCONNECT: it does not know this worker (any more).
    case reregistering(reason: String)
    case engineStarting
    case engineReady(detail: String, capacity: EngineCapacity, startupMilliseconds: UInt64)
    case engineStartFailed(reason: String, attempt: Int, retryInMilliseconds: UInt64)
    case engineGaveUp(failures: Int, lastError: String)
    case engineDied(code: FailureCode, message: String, restarts: Int)
    case watchdog(batchID: String, stalledMilliseconds: UInt64)
    case batchFailed(batchID: String, code: FailureCode, message: String)
    case draining(signal: String, running: [String], held: Int)
    case secondSignal(String)
    case drainTimeout
    case handshakeRefused(String)
    /// The engine's own step counts (cumulative) and the occupancy since the previous report.
    case engineStatistics(EngineStepStats, occupancy: Double?, inEngine: Int, held: Int, completed: Int)
}
