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
        let f = Array(frames.dropFirst(2))
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
        var out = [WireProtocol.headerFrame()]
        switch self {
        case .ready(let caps):
            out += [Field.u8(WorkerCommand.ready.rawValue), caps]
        case .credit(let n):
            out += [Field.u8(WorkerCommand.credit.rawValue), Field.u32(n)]
        case .progress(let id, let attempt, let done, let total):
            out += [Field.u8(WorkerCommand.progress.rawValue), Field.string(id), Field.u32(attempt), Field.u32(done), Field.u32(total)]
        case .result(let id, let attempt, let stats, let payload):
            out += [Field.u8(WorkerCommand.result.rawValue), Field.string(id), Field.u32(attempt), stats, payload]
        case .failed(let id, let attempt, let code, let retryable, let message, let partial):
            out += [Field.u8(WorkerCommand.failed.rawValue), Field.string(id), Field.u32(attempt), Field.string(code),
                    Field.u8(retryable ? 1 : 0), Field.string(message), partial]
        case .heartbeat(let stats):
            out += [Field.u8(WorkerCommand.heartbeat.rawValue), stats]
        case .bye(let reason):
            out += [Field.u8(WorkerCommand.bye.rawValue), Field.string(reason)]
        }
        return out
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
        var out = [WireProtocol.headerFrame()]
        switch self {
        case .welcome(let settings):
            out += [Field.u8(BrokerToWorker.welcome.rawValue), settings]
        case .batch(let id, let attempt, let meta, let payload):
            out += [Field.u8(BrokerToWorker.batch.rawValue), Field.string(id), Field.u32(attempt), meta.frame, payload]
        case .cancel(let id, let attempt):
            out += [Field.u8(BrokerToWorker.cancel.rawValue), Field.string(id), Field.u32(attempt)]
        case .heartbeat:
            out += [Field.u8(BrokerToWorker.heartbeat.rawValue)]
        case .disconnect(let reason):
            out += [Field.u8(BrokerToWorker.disconnect.rawValue), Field.string(reason)]
        }
        return out
    }

    public static func decode(_ frames: ArraySlice<Frame>) throws(ProtocolError) -> BrokerWorkerMessage {
        let raw = try WireProtocol.command(frames)
        guard let command = BrokerToWorker(rawValue: raw) else {
            throw ProtocolError(.unknownCommand, "unknown broker command 0x\(String(raw, radix: 16))")
        }
        let f = Array(frames.dropFirst(2))
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
