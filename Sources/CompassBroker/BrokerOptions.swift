import CompassJournal
import CompassSecurity
import CompassProtocol
import CompassScheduler

/// Everything the broker is configured with.
public struct BrokerOptions: Sendable {
    /// Where producers connect (ROUTER), e.g. `tcp://127.0.0.1:5555`; `*` ports are resolved at bind.
    public var frontend: String
    /// Where workers connect (ROUTER).
    public var backend: String
    public var scheduler = SchedulerConfig()
    /// Largest batch payload accepted (REJECTED `too_large` beyond it).
    public var maxPayloadBytes = WireProtocol.defaultMaxPayloadBytes
    /// Check each SUBMIT payload's JSON syntax and count its requests.
    public var validatePayloads = true
    /// Messages queued to one producer before further sends to it are dropped (results stay held
    /// and are re-sent on its next HELLO), and to one worker before it counts as not reading.
    public var frontendSendHighWaterMark: Int32 = 100_000
    public var backendSendHighWaterMark: Int32 = 10_000
    /// Messages queued from one peer before libzmq stops reading its connection (TCP backpressure).
    public var receiveHighWaterMark: Int32 = 1_000
    /// libzmq I/O threads.
    public var ioThreads: Int32 = 1
    /// Where the durable journal lives (nil: in memory only, nothing survives a restart).
    public var journalPath: String?
    public var journalDurability: Journal.Durability = .full
    /// CURVE on both sockets, with allowlists checked by the ZAP handler (nil: plaintext).
    public var curve: CurveServerKeys?

    public init(frontend: String, backend: String) {
        self.frontend = frontend
        self.backend = backend
    }

    /// ZMQ_MAXMSGSIZE: the payload limit plus room for header frames. A peer that sends a larger
    /// message is disconnected by libzmq before the broker allocates it.
    public var maxMessageBytes: Int64 { Int64(maxPayloadBytes) + (1 << 20) }
}
