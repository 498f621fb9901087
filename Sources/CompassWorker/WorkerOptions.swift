import CompassProtocol
import CompassSecurity

/// Everything a worker is configured with.
public struct WorkerOptions: Sendable {
    /// The broker's backend endpoint, e.g. `tcp://10.0.0.5:5556`.
    public var broker: String
    /// The pool this worker serves.
    public var pool: String
    /// Tensor-parallel size: how many GPUs this worker's engine spans.
    public var tp = 1
    /// The GPU indices this worker owns (empty: CPU).
    public var gpus: [Int] = []
    public var engine = "synthetic"
    public var model = ""
    /// `--engine-arg key=value` settings passed to the engine.
    public var engineArguments: [String: String] = [:]
    /// Batches the broker may send ahead: 1 runs, the rest wait here so the engine never idles.
    /// With an engine that declares a sequence capacity this is the least window in batches; the
    /// worker asks for as many more as keep the engine full (`WorkerStateMachine`).
    public var credit = 2
    /// Requests held in the worker beyond what the engine takes, so a slot that frees is filled
    /// without waiting for the broker (nil: a quarter of the engine's capacity, at least 2).
    public var readAhead: Int?
    /// Requests handed to the engine beyond its capacity, so it starts one the step a sequence ends
    /// instead of after a round trip through the worker (nil: the capacity, at least 1).
    public var engineQueue: Int?
    /// How often the worker logs its engine's occupancy (from the engine's own step counts; 0: never).
    public var statsIntervalMilliseconds: UInt64 = 10_000
    /// Largest batch (requests) this worker wants; reported to the broker.
    public var maxBatch = 256
    /// Heartbeat interval and liveness until the broker's WELCOME says otherwise.
    public var heartbeatMilliseconds: UInt64 = UInt64(WireProtocol.defaultHeartbeatMilliseconds)
    public var liveness: UInt64 = UInt64(WireProtocol.defaultLiveness)
    /// Reconnect backoff after the broker is lost: doubles from min to max.
    public var reconnectMinMilliseconds: UInt64 = 100
    public var reconnectMaxMilliseconds: UInt64 = 5_000
    /// How long SIGTERM waits for the running batch before handing it back.
    public var drainMilliseconds: UInt64 = 30_000
    /// How long the engine may take to become ready (model loading can take minutes).
    public var startupTimeoutMilliseconds: UInt64 = 600_000
    /// Longest time a running batch may go without progress before the engine is killed (0 = never).
    public var progressTimeoutMilliseconds: UInt64 = 300_000
    /// Engine restart backoff, doubling from min to max.
    public var restartMinMilliseconds: UInt64 = 250
    public var restartMaxMilliseconds: UInt64 = 30_000
    /// Consecutive failed engine starts after which the worker gives up and exits non-zero.
    public var maxStartFailures = 5
    /// CURVE: the broker's public key and this worker's key pair (nil: plaintext).
    public var curve: CurveClientKeys?

    public init(broker: String, pool: String) {
        self.broker = broker
        self.pool = pool
    }
}
