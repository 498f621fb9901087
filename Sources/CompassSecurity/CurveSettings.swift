import ZMQ

/// A client's (producer's or worker's) CURVE settings: the broker's public key and its own pair.
public struct CurveClientKeys: Sendable, Equatable {
    public var serverKey: String
    public var keys: CurveKeyPair

    public init(serverKey: String, keys: CurveKeyPair) {
        self.serverKey = serverKey
        self.keys = keys
    }

    /// Loads `--curve-server-key KEY|FILE` and `--curve-key FILE`; without the latter a throwaway
    /// pair is made (encryption only: a broker with an allowlist will refuse it).
    public static func load(serverKey: String?, keyFile: String?) throws -> CurveClientKeys? {
        guard let serverKey else {
            if keyFile != nil { throw SecurityError("--curve-key needs --curve-server-key (the broker's public key)") }
            return nil
        }
        let server = try KeyFiles.loadPublic(serverKey)
        let own = try keyFile.map(KeyFiles.loadSecret) ?? CurveKeyPair.generate()
        return CurveClientKeys(serverKey: server, keys: own)
    }

    /// The options that make a connecting socket a CURVE client.
    public var socketOptions: [SocketOption] {
        [.curveServerKey(CurveKey.decode(serverKey) ?? []), .curvePublicKey(CurveKey.decode(keys.publicKey) ?? []),
         .curveSecretKey(CurveKey.decode(keys.secretKey) ?? [])]
    }
}

/// The broker's CURVE settings.
public struct CurveServerKeys: Sendable, Equatable {
    public var keys: CurveKeyPair
    /// Allowlist paths (directory of certificates, or a file of keys); nil admits any key.
    public var producers: String?
    public var workers: String?

    public init(keys: CurveKeyPair, producers: String?, workers: String?) {
        self.keys = keys
        self.producers = producers
        self.workers = workers
    }

    public func socketOptions(domain: String) -> [SocketOption] {
        [.zapDomain(domain), .curveServer(true), .curvePublicKey(CurveKey.decode(keys.publicKey) ?? []),
         .curveSecretKey(CurveKey.decode(keys.secretKey) ?? [])]
    }
}

/// Whether a ZeroMQ endpoint can only be reached from this host (ipc, inproc, loopback TCP).
public func isLoopbackEndpoint(_ endpoint: String) -> Bool {
    if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
    guard endpoint.hasPrefix("tcp://") else { return false }
    var host = String(endpoint.dropFirst(6))
    if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
    return host == "localhost" || host.hasPrefix("127.") || host == "[::1]" || host == "::1"
}
