import CLibZMQ

/// The socket options compass sets, with libzmq's units spelled out.
public enum SocketOption: Sendable {
    /// How long unsent messages are kept after close (0 drops them at once, -1 waits forever).
    case linger(milliseconds: Int32)
    /// Messages queued for sending per peer before send blocks or fails (0 = unbounded).
    case sendHighWaterMark(Int32)
    /// Messages queued on receive per peer before libzmq stops reading from that peer.
    case receiveHighWaterMark(Int32)
    /// Largest inbound message in bytes; a peer sending more is disconnected (-1 = no limit).
    case maxMessageSize(Int64)
    /// The routing id a DEALER presents to a ROUTER.
    case routingID([UInt8])
    /// ROUTER: fail a send to an unknown peer with EHOSTUNREACH instead of dropping it.
    case routerMandatory(Bool)
    /// ROUTER: a new connection with a known routing id takes it over from the old one.
    case routerHandover(Bool)
    /// Queue messages only to completed connections.
    case immediate(Bool)
    /// Blocking receive gives up after this many ms (-1 waits forever).
    case receiveTimeout(milliseconds: Int32)
    /// Blocking send gives up after this many ms (-1 waits forever).
    case sendTimeout(milliseconds: Int32)
    /// First and largest delay between reconnection attempts.
    case reconnectInterval(milliseconds: Int32)
    case reconnectIntervalMax(milliseconds: Int32)
    /// ZMTP-level PING interval and timeout; a silent connection is closed by libzmq.
    case heartbeatInterval(milliseconds: Int32)
    case heartbeatTimeout(milliseconds: Int32)
    /// CURVE server role (the broker's ROUTER sockets).
    case curveServer(Bool)
    /// CURVE keys, 32 raw bytes each.
    case curvePublicKey([UInt8])
    case curveSecretKey([UInt8])
    case curveServerKey([UInt8])
    /// The ZAP domain sent to the authentication handler.
    case zapDomain(String)
}

extension ZMQSocket {
    /// Sets one option.
    public func set(_ option: SocketOption) throws {
        switch option {
        case .linger(let ms): try setInt32(ZMQ_LINGER, "ZMQ_LINGER", ms)
        case .sendHighWaterMark(let n): try setInt32(ZMQ_SNDHWM, "ZMQ_SNDHWM", n)
        case .receiveHighWaterMark(let n): try setInt32(ZMQ_RCVHWM, "ZMQ_RCVHWM", n)
        case .maxMessageSize(let n): try setInt64(ZMQ_MAXMSGSIZE, "ZMQ_MAXMSGSIZE", n)
        case .routingID(let id): try setBytes(ZMQ_ROUTING_ID, "ZMQ_ROUTING_ID", id)
        case .routerMandatory(let on): try setInt32(ZMQ_ROUTER_MANDATORY, "ZMQ_ROUTER_MANDATORY", on ? 1 : 0)
        case .routerHandover(let on): try setInt32(ZMQ_ROUTER_HANDOVER, "ZMQ_ROUTER_HANDOVER", on ? 1 : 0)
        case .immediate(let on): try setInt32(ZMQ_IMMEDIATE, "ZMQ_IMMEDIATE", on ? 1 : 0)
        case .receiveTimeout(let ms): try setInt32(ZMQ_RCVTIMEO, "ZMQ_RCVTIMEO", ms)
        case .sendTimeout(let ms): try setInt32(ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO", ms)
        case .reconnectInterval(let ms): try setInt32(ZMQ_RECONNECT_IVL, "ZMQ_RECONNECT_IVL", ms)
        case .reconnectIntervalMax(let ms): try setInt32(ZMQ_RECONNECT_IVL_MAX, "ZMQ_RECONNECT_IVL_MAX", ms)
        case .heartbeatInterval(let ms): try setInt32(ZMQ_HEARTBEAT_IVL, "ZMQ_HEARTBEAT_IVL", ms)
        case .heartbeatTimeout(let ms): try setInt32(ZMQ_HEARTBEAT_TIMEOUT, "ZMQ_HEARTBEAT_TIMEOUT", ms)
        case .curveServer(let on): try setInt32(ZMQ_CURVE_SERVER, "ZMQ_CURVE_SERVER", on ? 1 : 0)
        case .curvePublicKey(let key): try setBytes(ZMQ_CURVE_PUBLICKEY, "ZMQ_CURVE_PUBLICKEY", key)
        case .curveSecretKey(let key): try setBytes(ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", key)
        case .curveServerKey(let key): try setBytes(ZMQ_CURVE_SERVERKEY, "ZMQ_CURVE_SERVERKEY", key)
        case .zapDomain(let domain): try setBytes(ZMQ_ZAP_DOMAIN, "ZMQ_ZAP_DOMAIN", Array(domain.utf8))
        }
    }

    /// Sets several options in order.
    public func set(_ options: [SocketOption]) throws {
        for option in options { try set(option) }
    }
}
