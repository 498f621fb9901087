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
        let f = CommandFields(frames)
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
        var list = FrameList()
        write(to: &list)
        return list.frames
    }

    /// Writes the frames (without routing id) to `sink`.
    @inlinable
    public func write<S: MessageSink>(to sink: inout S) {
        switch self {
        case .hello(let session):
            WireProtocol.write(command: ProducerCommand.hello.rawValue, to: &sink)
            sink.append(string: session, last: true)
        case .submit(let id, let pool, let meta, let payload):
            WireProtocol.write(command: ProducerCommand.submit.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(string: pool)
            meta.write(to: &sink)
            sink.append(frame: payload, last: true)
        case .cancel(let id):
            WireProtocol.write(command: ProducerCommand.cancel.rawValue, to: &sink)
            sink.append(string: id, last: true)
        case .ack(let id):
            WireProtocol.write(command: ProducerCommand.ack.rawValue, to: &sink)
            sink.append(string: id, last: true)
        case .status:
            WireProtocol.write(command: ProducerCommand.status.rawValue, last: true, to: &sink)
        case .heartbeat:
            WireProtocol.write(command: ProducerCommand.heartbeat.rawValue, last: true, to: &sink)
        }
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
        var list = FrameList()
        write(to: &list)
        return list.frames
    }

    /// Writes the frames (without routing id) to `sink`.
    @inlinable
    public func write<S: MessageSink>(to sink: inout S) {
        switch self {
        case .welcome(let session, let info):
            WireProtocol.write(command: BrokerReply.welcome.rawValue, to: &sink)
            sink.append(string: session)
            sink.append(frame: info, last: true)
        case .accepted(let id):
            WireProtocol.write(command: BrokerReply.accepted.rawValue, to: &sink)
            sink.append(string: id, last: true)
        case .rejected(let id, let code, let message, let retry):
            WireProtocol.write(command: BrokerReply.rejected.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(string: code)
            sink.append(string: message)
            sink.append(u32: retry, last: true)
        case .progress(let id, let done, let total):
            WireProtocol.write(command: BrokerReply.progress.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(u32: done)
            sink.append(u32: total, last: true)
        case .result(let id, let attempts, let stats, let payload):
            WireProtocol.write(command: BrokerReply.result.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(u32: attempts)
            sink.append(frame: stats, last: false)
            sink.append(frame: payload, last: true)
        case .failed(let id, let attempts, let code, let message, let partial):
            WireProtocol.write(command: BrokerReply.failed.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(u32: attempts)
            sink.append(string: code)
            sink.append(string: message)
            sink.append(frame: partial, last: true)
        case .status(let json):
            WireProtocol.write(command: BrokerReply.status.rawValue, to: &sink)
            sink.append(frame: json, last: true)
        case .heartbeat(let brokerID):
            WireProtocol.write(command: BrokerReply.heartbeat.rawValue, to: &sink)
            sink.append(string: brokerID, last: true)
        }
    }

    /// Decodes a reply (frames without routing id); used by clients.
    public static func decode(_ frames: ArraySlice<Frame>) throws(ProtocolError) -> ProducerReply {
        let raw = try WireProtocol.command(frames)
        guard let command = BrokerReply(rawValue: raw) else {
            throw ProtocolError(.unknownCommand, "unknown broker reply 0x\(String(raw, radix: 16))")
        }
        let f = CommandFields(frames)
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
