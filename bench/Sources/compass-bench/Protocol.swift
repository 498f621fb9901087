import Foundation

/// The compass wire protocol, version 1, as docs/protocol.md gives it (the bench speaks it with
/// its own code: the main package's CompassWire module is not a product).
enum Wire {
    static let header = StaticBytes(Array("compass".utf8) + [1])
    static let emptyJSON = StaticBytes(Array("{}".utf8))

    // producer -> broker
    static let hello: UInt8 = 0x01, submit: UInt8 = 0x02, ack: UInt8 = 0x04, status: UInt8 = 0x05, pHeartbeat: UInt8 = 0x06
    // broker -> producer
    static let welcome: UInt8 = 0x81, accepted: UInt8 = 0x82, rejected: UInt8 = 0x83, progress: UInt8 = 0x84
    static let result: UInt8 = 0x85, failed: UInt8 = 0x86, statusReply: UInt8 = 0x87, bHeartbeat: UInt8 = 0x88
    // worker -> broker
    static let ready: UInt8 = 0x11, credit: UInt8 = 0x12, wResult: UInt8 = 0x14, wFailed: UInt8 = 0x15
    static let wHeartbeat: UInt8 = 0x16, bye: UInt8 = 0x17
    // broker -> worker
    static let wWelcome: UInt8 = 0x91, batch: UInt8 = 0x92, cancel: UInt8 = 0x93, toWorkerHeartbeat: UInt8 = 0x94
    static let disconnect: UInt8 = 0x95

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
