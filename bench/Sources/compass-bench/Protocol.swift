import Foundation

import CompassProtocol

/// The compass wire protocol's bytes, from the project's own `CompassProtocol` (spec/protocol.json
/// is what both are tested against). The bench frames messages with its own thin libzmq layer
/// (ZMQLite.swift) rather than CompassWire, which is not a product of the main package.
enum Wire {
    static let header = StaticBytes(WireProtocol.header)
    static let emptyJSON = StaticBytes(Array("{}".utf8))

    // producer -> broker
    static let hello = ProducerCommand.hello.rawValue, submit = ProducerCommand.submit.rawValue
    static let ack = ProducerCommand.ack.rawValue, status = ProducerCommand.status.rawValue
    static let pHeartbeat = ProducerCommand.heartbeat.rawValue
    // broker -> producer
    static let welcome = BrokerReply.welcome.rawValue, accepted = BrokerReply.accepted.rawValue
    static let rejected = BrokerReply.rejected.rawValue, progress = BrokerReply.progress.rawValue
    static let result = BrokerReply.result.rawValue, failed = BrokerReply.failed.rawValue
    static let statusReply = BrokerReply.status.rawValue, bHeartbeat = BrokerReply.heartbeat.rawValue
    // worker -> broker
    static let ready = WorkerCommand.ready.rawValue, credit = WorkerCommand.credit.rawValue
    static let wResult = WorkerCommand.result.rawValue, wFailed = WorkerCommand.failed.rawValue
    static let wHeartbeat = WorkerCommand.heartbeat.rawValue, bye = WorkerCommand.bye.rawValue
    // broker -> worker
    static let wWelcome = BrokerToWorker.welcome.rawValue, batch = BrokerToWorker.batch.rawValue
    static let cancel = BrokerToWorker.cancel.rawValue, toWorkerHeartbeat = BrokerToWorker.heartbeat.rawValue
    static let disconnect = BrokerToWorker.disconnect.rawValue

    /// u32 request_count, u16 max_attempts, i16 priority, u32 deadline_ms, u32 flags.
    static func meta(requests: UInt32, maxAttempts: UInt16 = 0) -> [UInt8] {
        var out: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.bigEndian) { out.append(contentsOf: $0) } }
        put(requests); put(maxAttempts); put(Int16(0)); put(UInt32(0)); put(UInt32(0))
        return out
    }

    static func readyJSON(pool: String, credit: Int, engine: String = "null") -> [UInt8] {
        Array("""
        {"pool":"\(pool)","tp":1,"gpus":[],"model":"","engine":"\(engine)","max_batch":256,"credit":\(credit),\
        "pid":\(getpid()),"host":"bench","version":"bench"}
        """.utf8)
    }
}

/// A batch payload of about `bytes` bytes: a JSON array of `requests` requests whose prompts are
/// words, as a producer would send (the broker checks its JSON syntax; null workers echo it).
func makePayload(bytes: Int) -> (payload: [UInt8], requests: Int) {
    let requests = bytes <= 4096 ? 1 : min(64, bytes / 4096) // 1 KiB: 1, 64 KiB: 16, 1 MiB: 64
    let words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "GPUs", "decode"]
    var items: [String] = []
    let skeleton = #"{"custom_id":"r000000","prompt":"","max_tokens":16}"#
    let overhead = 2 + requests * skeleton.utf8.count + (requests - 1)
    let perPrompt = max(1, (bytes - overhead) / requests)
    var total = overhead
    for r in 0..<requests {
        let target = r == requests - 1 ? max(1, bytes - total) : perPrompt
        var prompt = ""
        var i = r
        while prompt.utf8.count < target {
            let w = words[i % words.count]
            i += 1
            if !prompt.isEmpty { prompt += " " }
            prompt += w
        }
        prompt = String(prompt.utf8.prefix(target))!
        if prompt.hasSuffix(" ") { prompt = String(prompt.dropLast()) + "x" }
        total += prompt.utf8.count
        items.append(#"{"custom_id":"r"# + String(format: "%06d", r) + #"","prompt":""# + prompt + #"","max_tokens":16}"#)
    }
    return (Array(("[" + items.joined(separator: ",") + "]").utf8), requests)
}
