/// The affinity key a producer puts in a batch's meta (`BatchMeta.affinity`), derived from what
/// requests that can share computation have in common: the start of their input. Requests whose
/// first `prefixBytes` bytes agree (a few-shot preamble, one scoring context with several
/// continuations, a long system prompt) get the same key, and the broker places batches with the
/// same key on the same worker where the pool allows, so that worker's engine computes the shared
/// prefix once (vLLM's prefix cache is per engine; the hf engine groups shared prefixes per batch).
///
/// The broker treats keys as opaque; this derivation only has to agree between the producers that
/// feed one pool, which is why docs/protocol.md states it and the Python client computes the same
/// (`compass_client.protocol.affinity_key`, tested against `spec/protocol.json`):
/// FNV-1a (64-bit) over a tag byte (`p` prompt, `t` token ids, `m` chat messages) followed by
/// the first `prefixBytes` bytes of the input: the prompt's UTF-8; each token id as 4 bytes
/// big-endian; or each message's role, a 0 byte, its content, a 0 byte. 0 (no key) is never produced.
public enum AffinityKey {
    /// How much of the input decides the key: enough to tell few-shot preambles apart, little
    /// enough that requests which share only a preamble still agree.
    public static let prefixBytes = 256

    /// The key of a batch: that of its first request (0 for an empty batch).
    public static func of(_ requests: [InferenceRequest]) -> UInt64 {
        requests.first.map(of) ?? 0
    }

    /// The key of one request's input.
    public static func of(_ request: InferenceRequest) -> UInt64 {
        var hash = FNV1a()
        if let ids = request.promptTokenIDs {
            hash.add(UInt8(ascii: "t"))
            for id in ids.prefix(prefixBytes / 4) {
                let v = UInt32(truncatingIfNeeded: id)
                for shift in [24, 16, 8, 0] { hash.add(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
            }
        } else if let messages = request.messages {
            hash.add(UInt8(ascii: "m"))
            var budget = prefixBytes
            func take(_ bytes: some Sequence<UInt8>) {
                for byte in bytes {
                    guard budget > 0 else { return }
                    hash.add(byte)
                    budget -= 1
                }
            }
            for m in messages where budget > 0 {
                take(m.role.utf8)
                take(CollectionOfOne(UInt8(0)))
                take(m.content.utf8)
                take(CollectionOfOne(UInt8(0)))
            }
        } else {
            hash.add(UInt8(ascii: "p"))
            for byte in (request.prompt ?? "").utf8.prefix(prefixBytes) { hash.add(byte) }
        }
        return hash.value == 0 ? 1 : hash.value
    }

    /// 64-bit FNV-1a: tiny, stable across processes and languages (Swift's `Hasher` is seeded per process).
    struct FNV1a {
        var value: UInt64 = 0xcbf2_9ce4_8422_2325
        mutating func add(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
    }
}
