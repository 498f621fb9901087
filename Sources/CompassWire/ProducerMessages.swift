import CompassProtocol
import ZMQ

/// A message from a producer to the broker's frontend.
public enum ProducerRequest {
    case hello(session: String)
    case submit(batchID: String, pool: String, meta: BatchMeta, payload: Frame)
    case cancel(batchID: String)
    case ack(batchID: String)
    case status
    case heartbeat

    /// Decodes the frames after the routing id: header, command, fields.
    public static func decode(_ frames: ArraySlice<Frame>) throws(ProtocolError) -> ProducerRequest {
        let raw = try WireProtocol.command(frames)
        guard let command = ProducerCommand(rawValue: raw) else {
            throw ProtocolError(.unknownCommand, "unknown producer command 0x\(String(raw, radix: 16))")
        }
        let f = Array(frames.dropFirst(2))
        func expect(_ n: Int) throws(ProtocolError) {
            guard f.count == n else {
                throw ProtocolError(.badFrame, "\(command) takes \(n) frames after the command, got \(f.count)")
            }
        }
        switch command {
        case .hello:
            try expect(1)
            return .hello(session: try Field.readString(f[0], "session", max: WireProtocol.maxSessionBytes))
        case .submit:
            try expect(4)
            return .submit(
                batchID: try Field.readString(f[0], "batch id", max: WireProtocol.maxBatchIDBytes),
                pool: try Field.readString(f[1], "pool", max: WireProtocol.maxPoolNameBytes),
                meta: try BatchMeta.decode(f[2]),
                payload: f[3])
        case .cancel:
            try expect(1)
            return .cancel(batchID: try Field.readString(f[0], "batch id", max: WireProtocol.maxBatchIDBytes))
        case .ack:
            try expect(1)
            return .ack(batchID: try Field.readString(f[0], "batch id", max: WireProtocol.maxBatchIDBytes))
        case .status:
            try expect(0)
            return .status
        case .heartbeat:
            try expect(0)
            return .heartbeat
        }
    }

    /// The frames to send (without routing id).
    public func encode() -> [Frame] {
        var out = [WireProtocol.headerFrame()]
        switch self {
        case .hello(let session):
            out += [Field.u8(ProducerCommand.hello.rawValue), Field.string(session)]
        case .submit(let id, let pool, let meta, let payload):
            out += [Field.u8(ProducerCommand.submit.rawValue), Field.string(id), Field.string(pool), meta.frame, payload]
        case .cancel(let id):
            out += [Field.u8(ProducerCommand.cancel.rawValue), Field.string(id)]
        case .ack(let id):
            out += [Field.u8(ProducerCommand.ack.rawValue), Field.string(id)]
        case .status:
            out += [Field.u8(ProducerCommand.status.rawValue)]
        case .heartbeat:
            out += [Field.u8(ProducerCommand.heartbeat.rawValue)]
        }
        return out
    }
}

/// A message from the broker to a producer.
public enum ProducerReply {
    case welcome(session: String, info: Frame)
    case accepted(batchID: String)
    case rejected(batchID: String, code: String, message: String, retryAfterMilliseconds: UInt32)
    case progress(batchID: String, done: UInt32, total: UInt32)
    case result(batchID: String, attempts: UInt32, stats: Frame, payload: Frame)
    case failed(batchID: String, attempts: UInt32, code: String, message: String, partial: Frame)
    case status(json: Frame)
    case heartbeat(brokerID: String)

    public func encode() -> [Frame] {
        var out = [WireProtocol.headerFrame()]
        switch self {
        case .welcome(let session, let info):
            out += [Field.u8(BrokerReply.welcome.rawValue), Field.string(session), info]
        case .accepted(let id):
            out += [Field.u8(BrokerReply.accepted.rawValue), Field.string(id)]
        case .rejected(let id, let code, let message, let retry):
            out += [Field.u8(BrokerReply.rejected.rawValue), Field.string(id), Field.string(code), Field.string(message), Field.u32(retry)]
        case .progress(let id, let done, let total):
            out += [Field.u8(BrokerReply.progress.rawValue), Field.string(id), Field.u32(done), Field.u32(total)]
        case .result(let id, let attempts, let stats, let payload):
            out += [Field.u8(BrokerReply.result.rawValue), Field.string(id), Field.u32(attempts), stats, payload]
        case .failed(let id, let attempts, let code, let message, let partial):
            out += [Field.u8(BrokerReply.failed.rawValue), Field.string(id), Field.u32(attempts), Field.string(code), Field.string(message), partial]
        case .status(let json):
            out += [Field.u8(BrokerReply.status.rawValue), json]
        case .heartbeat(let brokerID):
            out += [Field.u8(BrokerReply.heartbeat.rawValue), Field.string(brokerID)]
        }
        return out
    }

    /// Decodes a reply (frames without routing id); used by clients.
    public static func decode(_ frames: ArraySlice<Frame>) throws(ProtocolError) -> ProducerReply {
        let raw = try WireProtocol.command(frames)
        guard let command = BrokerReply(rawValue: raw) else {
            throw ProtocolError(.unknownCommand, "unknown broker reply 0x\(String(raw, radix: 16))")
        }
        let f = Array(frames.dropFirst(2))
        func expect(_ n: Int) throws(ProtocolError) {
            guard f.count == n else { throw ProtocolError(.badFrame, "\(command) has \(n) frames after the command, got \(f.count)") }
        }
        let maxID = WireProtocol.maxBatchIDBytes
        switch command {
        case .welcome:
            try expect(2)
            return .welcome(session: Field.readText(f[0]), info: f[1])
        case .accepted:
            try expect(1)
            return .accepted(batchID: try Field.readString(f[0], "batch id", max: maxID))
        case .rejected:
            try expect(4)
            return .rejected(batchID: try Field.readString(f[0], "batch id", max: maxID, allowEmpty: true),
                             code: Field.readText(f[1]), message: Field.readText(f[2]),
                             retryAfterMilliseconds: try Field.readU32(f[3], "retry after"))
        case .progress:
            try expect(3)
            return .progress(batchID: try Field.readString(f[0], "batch id", max: maxID),
                             done: try Field.readU32(f[1], "done"), total: try Field.readU32(f[2], "total"))
        case .result:
            try expect(4)
            return .result(batchID: try Field.readString(f[0], "batch id", max: maxID),
                           attempts: try Field.readU32(f[1], "attempts"), stats: f[2], payload: f[3])
        case .failed:
            try expect(5)
            return .failed(batchID: try Field.readString(f[0], "batch id", max: maxID),
                           attempts: try Field.readU32(f[1], "attempts"), code: Field.readText(f[2]),
                           message: Field.readText(f[3]), partial: f[4])
        case .status:
            try expect(1)
            return .status(json: f[0])
        case .heartbeat:
            try expect(1)
            return .heartbeat(brokerID: Field.readText(f[0]))
        }
    }
}
