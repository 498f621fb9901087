import CompassClient
import CompassProtocol
import CompassSecurity
import Foundation
import Testing
import ZMQ

#if canImport(Glibc)
import Glibc
#endif

@Suite("CURVE and allowlists with real processes", .serialized, .timeLimit(.minutes(3)))
struct SecurityTests {
    /// Keys in a temp dir: broker, producers/alice, workers/w1, and an unlisted mallory.
    func makeKeys(_ dir: TempDir) async throws {
        for (name, sub) in [("broker", ""), ("alice", "/producers"), ("w1", "/workers"), ("w2", "/workers"), ("mallory", "")] {
            let run = try Spawned("compass", ["keys", "new", name, "--dir", dir.path + sub], in: dir, name: "keys-\(name)")
            #expect(try await run.waitForExit(timeout: 20).isSuccess, "\(run.log())")
        }
    }

    func curveClient(_ frontend: String, _ dir: TempDir, key: String?) throws -> CompassClient {
        var options = ClientOptions(broker: frontend)
        options.heartbeatMilliseconds = 100
        options.curve = try CurveClientKeys.load(serverKey: dir.file("broker.pub"), keyFile: key)
        return try CompassClient(options: options)
    }

    @Test("Allowed producer and worker complete a run; unknown key, plaintext and a producer's key as worker get nothing")
    func allowlistsAdmitOnlyListedKeys() async throws {
        let dir = TempDir()
        try await makeKeys(dir)
        let broker = try await BrokerProcess(in: dir, arguments: ["--curve-secret", dir.file("broker.key"),
                                                            "--allow-producers", dir.file("producers"), "--allow-workers", dir.file("workers")])
        let curveArgs = ["--curve-server-key", dir.file("broker.pub")]
        let worker = try startWorker(broker.backend, in: dir, name: "w1", arguments: curveArgs + ["--curve-key", dir.file("workers/w1.key")])
        try await worker.waitForLog("registered with broker")
        let alice = try curveClient(broker.frontend, dir, key: dir.file("producers/alice.key"))
        defer { alice.close() }
        let good = try await alice.submit([InferenceRequest(customID: "a", prompt: "over curve")], pool: "default")
        #expect(try good.results().first?.text == "curve over")

        // A producer with an unknown key: refused at the handshake, told so, nothing submitted.
        let mallory = try curveClient(broker.frontend, dir, key: dir.file("mallory.key"))
        defer { mallory.close() }
        await #expect(throws: ClientError.self) {
            _ = try await mallory.submit([InferenceRequest(customID: "m", prompt: "let me in")], pool: "default")
        }
        // A plaintext producer: the handshake fails, nothing submitted.
        let plain = try testClient(broker.frontend)
        defer { plain.close() }
        await #expect(throws: ClientError.self) {
            _ = try await plain.submit([InferenceRequest(customID: "p", prompt: "no keys")], pool: "default")
        }
        // A worker presenting a producer's key: refused, exits with status 4 and says why.
        let impostor = try startWorker(broker.backend, in: dir, name: "impostor",
                                       arguments: curveArgs + ["--curve-key", dir.file("producers/alice.key")])
        #expect(try await impostor.waitForExit(timeout: 20) == .exited(4))
        #expect(impostor.log().contains("refused this worker's CURVE key"))

        // The allowed ones are still served, and nothing else got in.
        let again = try await alice.submit([InferenceRequest(customID: "b", prompt: "still fine")], pool: "default")
        #expect(try again.results().first?.text == "fine still")
        let s = try await status(alice)
        #expect(s.scheduler.pools.first?.counters.submitted == 2)
        #expect(s.scheduler.workers.count == 1)
        #expect(s.security == "curve")
        #expect((s.curveRefusals ?? 0) >= 2)
        #expect(broker.process.log().contains("CURVE handshake refused"))
    }

    @Test("Removing a worker's key from the allowlist and reloading (SIGHUP) stops new connections from it")
    func reloadRevokesAWorker() async throws {
        let dir = TempDir()
        try await makeKeys(dir)
        let broker = try await BrokerProcess(in: dir, arguments: ["--curve-secret", dir.file("broker.key"),
                                                            "--allow-producers", dir.file("producers"), "--allow-workers", dir.file("workers")])
        let args = ["--curve-server-key", dir.file("broker.pub"), "--curve-key", dir.file("workers/w2.key")]
        let first = try startWorker(broker.backend, in: dir, name: "before", arguments: args)
        try await first.waitForLog("registered with broker")
        first.child.signal(SIGTERM)
        _ = try await first.waitForExit(timeout: 20)
        try FileManager.default.removeItem(atPath: dir.file("workers/w2.pub"))
        broker.process.child.signal(SIGHUP)
        try await broker.process.waitForLog("SIGHUP: worker allowlist")
        let after = try startWorker(broker.backend, in: dir, name: "after", arguments: args)
        #expect(try await after.waitForExit(timeout: 20) == .exited(4))
        #expect(after.log().contains("refused this worker's CURVE key"))
    }

    @Test("Key files whose absolute paths are 40 characters of Z85 (allowlist .pub, broker .pub) are read as files; a refusal names the key and the allowlist")
    func fortyCharacterKeyPaths() async throws {
        // Every character of a path like /tmp/c-1a2b3c4d/producers/alice-0001.pub is in the Z85
        // alphabet: at 40 characters it decodes as a key. The broker took such a .pub path for the
        // key itself and refused the producer the file lists (issue 20, item 13).
        var root = ""
        var producerName = "", brokerName = ""
        for _ in 0..<50 {
            let candidate = "/tmp/c-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
            producerName = "p" + String(repeating: "x", count: 40 - "\(candidate)/producers/".count - ".pub".count - 1)
            brokerName = "b" + String(repeating: "y", count: 40 - "\(candidate)/".count - ".pub".count - 1)
            if CurveKey.decode("\(candidate)/producers/\(producerName).pub") != nil, CurveKey.decode("\(candidate)/\(brokerName).pub") != nil,
               !FileManager.default.fileExists(atPath: candidate) {
                root = candidate
                break
            }
        }
        try #require(!root.isEmpty, "no 40-character Z85 path found")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let dir = TempDir()  // logs
        for (name, sub) in [(brokerName, ""), (producerName, "/producers"), ("mallory", "/others")] {
            let run = try Spawned("compass", ["keys", "new", name, "--dir", root + sub], in: dir, name: "keys-\(name)")
            #expect(try await run.waitForExit(timeout: 20).isSuccess, "\(run.log())")
        }
        let brokerPub = "\(root)/\(brokerName).pub"
        #expect(brokerPub.count == 40 && "\(root)/producers/\(producerName).pub".count == 40)
        let broker = try await BrokerProcess(in: dir, arguments: ["--curve-secret", "\(root)/\(brokerName).key", "--allow-producers", "\(root)/producers"])
        try await broker.process.waitForLog("\(root)/producers: 1 key (\(producerName).pub)")  // logged as its poll loop starts
        var options = ClientOptions(broker: broker.frontend)
        options.heartbeatMilliseconds = 100
        options.curve = try CurveClientKeys.load(serverKey: brokerPub, keyFile: "\(root)/producers/\(producerName).key")
        let allowed = try CompassClient(options: options)
        defer { allowed.close() }
        #expect(try await status(allowed).security == "curve")

        let malloryKey = try KeyFiles.loadPublic("\(root)/others/mallory.pub")
        options.curve = try CurveClientKeys.load(serverKey: brokerPub, keyFile: "\(root)/others/mallory.key")
        let refused = try CompassClient(options: options)
        defer { refused.close() }
        do {
            _ = try await refused.status(timeoutSeconds: 10)
            Issue.record("an unlisted key was admitted")
        } catch let error as ClientError {
            #expect("\(error)".contains(malloryKey), "\(error)")
        }
        try await broker.process.waitForLog("key \(malloryKey) is not among the producer allowlist's keys: \(root)/producers: 1 key (\(producerName).pub)")
    }

    @Test("A non-loopback endpoint without CURVE is warned about at start")
    func plaintextOnTheNetworkIsWarned() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, frontend: "tcp://0.0.0.0:*")
        #expect(broker.process.log().contains("runs without CURVE"))
        let quiet = try await BrokerProcess(in: dir, name: "quiet", frontend: "tcp://0.0.0.0:*", arguments: ["--insecure"])
        #expect(!quiet.process.log().contains("runs without CURVE"))
    }

    @Test("compass keys writes the secret file 0600 and refuses to overwrite")
    func keyFiles() async throws {
        let dir = TempDir()
        let run = try Spawned("compass", ["keys", "new", "node", "--dir", dir.path], in: dir, name: "keys")
        #expect(try await run.waitForExit(timeout: 20).isSuccess)
        let mode = try FileManager.default.attributesOfItem(atPath: dir.file("node.key"))[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let pub = try KeyFiles.loadPublic(dir.file("node.pub"))
        #expect(try KeyFiles.loadSecret(dir.file("node.key")).publicKey == pub)
        let again = try Spawned("compass", ["keys", "new", "node", "--dir", dir.path], in: dir, name: "again")
        #expect(try await again.waitForExit(timeout: 20) == .exited(1))
        #expect(again.log().contains("exists"))
    }
}
