import CLibZMQ

/// A CURVE key pair in Z85 text form (40 characters each), as `zmq_curve_keypair` makes them.
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    public init(publicKey: String, secretKey: String) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// A fresh random key pair. Fails when libzmq was built without CURVE (libsodium).
    public static func generate() throws -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41)
        var sec = [CChar](repeating: 0, count: 41)
        _ = try retryingEINTR("zmq_curve_keypair") { zmq_curve_keypair(&pub, &sec) }
        return CurveKeyPair(publicKey: cText(pub), secretKey: cText(sec))
    }

    /// The key pair for a Z85 secret key (the public key is derived).
    public init(secretKey: String) throws {
        guard CurveKey.decode(secretKey) != nil else {
            throw ZMQError(code: 22, call: "zmq_z85_decode", detail: "secret key is not 40 Z85 characters")
        }
        var pub = [CChar](repeating: 0, count: 41)
        _ = try retryingEINTR("zmq_curve_public") { zmq_curve_public(&pub, secretKey) }
        self.init(publicKey: cText(pub), secretKey: secretKey)
    }
}

/// Z85 conversions for 32-byte CURVE keys.
public enum CurveKey {
    /// The 32 raw bytes of a 40-character Z85 key, or nil if it is not one.
    public static func decode(_ z85: String) -> [UInt8]? {
        guard z85.utf8.count == 40 else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        guard zmq_z85_decode(&out, z85) != nil else { return nil }
        return out
    }

    /// The 40-character Z85 text of 32 raw key bytes.
    public static func encode(_ raw: [UInt8]) -> String? {
        guard raw.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        guard zmq_z85_encode(&out, raw, 32) != nil else { return nil }
        return cText(out)
    }
}

/// The text of a NUL-terminated C buffer.
func cText(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
