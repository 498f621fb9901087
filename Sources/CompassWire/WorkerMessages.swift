import CompassProtocol
import ZMQ

/// A message from a worker to the broker's backend.
public enum WorkerMessage {
    case ready(capabilities: Frame)
    case credit(UInt32)
    case progress(batchID: String, attempt: UInt32, done: UInt32, total: UInt32)
    case result(batchID: String, attempt: UInt32, stats: Frame, payload: Frame)
    case failed(batchID: String, attempt: UInt32, code: String, retryable: Bool, message: String, partial: Frame)
    case heartbeat(stats: Frame)
    case bye(reason: String)

    public static func decode(_ frames: ArraySlice<Frame>) throws(ProtocolError) -> WorkerMessage {
        let raw = try WireProtocol.command(frames)
        guard let command = WorkerCommand(rawValue: raw) else {
            throw ProtocolError(.unknownCommand, "unknown worker command 0x\(String(raw, radix: 16))")
        }
        let f = CommandFields(frames)
        func expect(_ n: Int) throws(ProtocolError) {
            guard f.count == n else { throw ProtocolError(.badFrame, "\(command) takes \(n) frames after the command, got \(f.count)") }
        }
        let maxID = WireProtocol.maxDispatchIDBytes
        switch command {
        case .ready:
            try expect(1)
            return .ready(capabilities: f[0])
        case .credit:
            try expect(1)
            return .credit(try Field.readU32(f[0], "credit"))
        case .progress:
            try expect(4)
            return .progress(batchID: try Field.readString(f[0], "batch id", max: maxID), attempt: try Field.readU32(f[1], "attempt"),
                             done: try Field.readU32(f[2], "done"), total: try Field.readU32(f[3], "total"))
        case .result:
            try expect(4)
            return .result(batchID: try Field.readString(f[0], "batch id", max: maxID), attempt: try Field.readU32(f[1], "attempt"),
                           stats: f[2], payload: f[3])
        case .failed:
            try expect(6)
            return .failed(batchID: try Field.readString(f[0], "batch id", max: maxID), attempt: try Field.readU32(f[1], "attempt"),
                           code: try Field.readString(f[2], "code", max: WireProtocol.maxCodeBytes),
                           retryable: try Field.readU8(f[3], "retryable") != 0, message: Field.readText(f[4]), partial: f[5])
        case .heartbeat:
            try expect(1)
            return .heartbeat(stats: f[0])
        case .bye:
            try expect(1)
            return .bye(reason: Field.readText(f[0]))
        }
    }

    public func encode() -> [Frame] {
        var list = FrameList()
        write(to: &list)
        return list.frames
    }

    /// Writes the frames to `sink`.
    @inlinable
    public func write<S: MessageSink>(to sink: inout S) {
        switch self {
        case .ready(let caps):
            WireProtocol.write(command: WorkerCommand.ready.rawValue, to: &sink)
            sink.append(frame: caps, last: true)
        case .credit(let n):
            WireProtocol.write(command: WorkerCommand.credit.rawValue, to: &sink)
            sink.append(u32: n, last: true)
        case .progress(let id, let attempt, let done, let total):
            WireProtocol.write(command: WorkerCommand.progress.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(u32: attempt)
            sink.append(u32: done)
            sink.append(u32: total, last: true)
        case .result(let id, let attempt, let stats, let payload):
            WireProtocol.write(command: WorkerCommand.result.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(u32: attempt)
            sink.append(frame: stats, last: false)
            sink.append(frame: payload, last: true)
        case .failed(let id, let attempt, let code, let retryable, let message, let partial):
            WireProtocol.write(command: WorkerCommand.failed.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(u32: attempt)
            sink.append(string: code)
            sink.append(u8: retryable ? 1 : 0)
            sink.append(string: message)
            sink.append(frame: partial, last: true)
        case .heartbeat(let stats):
            WireProtocol.write(command: WorkerCommand.heartbeat.rawValue, to: &sink)
            sink.append(frame: stats, last: true)
        case .bye(let reason):
            WireProtocol.write(command: WorkerCommand.bye.rawValue, to: &sink)
            sink.append(string: reason, last: true)
        }
    }
}

/// A message from the broker to a worker.
public enum BrokerWorkerMessage {
    case welcome(settings: Frame)
    case batch(batchID: String, attempt: UInt32, meta: BatchMeta, payload: Frame)
    case cancel(batchID: String, attempt: UInt32)
    case heartbeat
    case disconnect(reason: String)

    public func encode() -> [Frame] {
        var list = FrameList()
        write(to: &list)
        return list.frames
    }

    /// Writes the frames (without routing id) to `sink`.
    @inlinable
    public func write<S: MessageSink>(to sink: inout S) {
        switch self {
        case .welcome(let settings):
            WireProtocol.write(command: BrokerToWorker.welcome.rawValue, to: &sink)
            sink.append(frame: settings, last: true)
        case .batch(let id, let attempt, let meta, let payload):
            WireProtocol.write(command: BrokerToWorker.batch.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(u32: attempt)
            meta.write(to: &sink)
            sink.append(frame: payload, last: true)
        case .cancel(let id, let attempt):
            WireProtocol.write(command: BrokerToWorker.cancel.rawValue, to: &sink)
            sink.append(string: id)
            sink.append(u32: attempt, last: true)
        case .heartbeat:
            WireProtocol.write(command: BrokerToWorker.heartbeat.rawValue, last: true, to: &sink)
        case .disconnect(let reason):
            WireProtocol.write(command: BrokerToWorker.disconnect.rawValue, to: &sink)
            sink.append(string: reason, last: true)
        }
    }

    public static func decode(_ frames: ArraySlice<Frame>) throws(ProtocolError) -> BrokerWorkerMessage {
        let raw = try WireProtocol.command(frames)
        guard let command = BrokerToWorker(rawValue: raw) else {
            throw ProtocolError(.unknownCommand, "unknown broker command 0x\(String(raw, radix: 16))")
        }
        let f = CommandFields(frames)
        func expect(_ n: Int) throws(ProtocolError) {
            guard f.count == n else { throw ProtocolError(.badFrame, "\(command) has \(n) frames after the command, got \(f.count)") }
        }
        switch command {
        case .welcome:
            try expect(1)
            return .welcome(settings: f[0])
        case .batch:
            try expect(4)
            return .batch(batchID: try Field.readString(f[0], "batch id", max: WireProtocol.maxDispatchIDBytes),
                          attempt: try Field.readU32(f[1], "attempt"), meta: try BatchMeta.decode(f[2]), payload: f[3])
        case .cancel:
            try expect(2)
            return .cancel(batchID: try Field.readString(f[0], "batch id", max: WireProtocol.maxDispatchIDBytes),
                           attempt: try Field.readU32(f[1], "attempt"))
        case .heartbeat:
            try expect(0)
            return .heartbeat
        case .disconnect:
            try expect(1)
            return .disconnect(reason: Field.readText(f[0]))
        }
    }
}
