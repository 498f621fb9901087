import CompassClient
import CompassProtocol
import CompassSecurity
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("CURVE and allowlists with real processes", .serialized, .timeLimit(.minutes(3)))
struct SecurityTests {
    /// Keys in a temp dir: broker, producers/alice, workers/w1, and an unlisted mallory.
    func makeKeys(_ dir: TempDir) throws {
        for (name, sub) in [("broker", ""), ("alice", "/producers"), ("w1", "/workers"), ("w2", "/workers"), ("mallory", "")] {
            let run = try Spawned("compass", ["keys", "new", name, "--dir", dir.path + sub], in: dir, name: "keys-\(name)")
            #expect(try run.waitForExit(timeout: 20).isSuccess, "\(run.log())")
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
        try makeKeys(dir)
        let broker = try BrokerProcess(in: dir, arguments: ["--curve-secret", dir.file("broker.key"),
                                                            "--allow-producers", dir.file("producers"), "--allow-workers", dir.file("workers")])
        let curveArgs = ["--curve-server-key", dir.file("broker.pub")]
        let worker = try startWorker(broker.backend, in: dir, name: "w1", arguments: curveArgs + ["--curve-key", dir.file("workers/w1.key")])
        try worker.waitForLog("registered with broker")
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
        #expect(try impostor.waitForExit(timeout: 20) == .exited(4))
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
        try makeKeys(dir)
        let broker = try BrokerProcess(in: dir, arguments: ["--curve-secret", dir.file("broker.key"),
                                                            "--allow-producers", dir.file("producers"), "--allow-workers", dir.file("workers")])
        let args = ["--curve-server-key", dir.file("broker.pub"), "--curve-key", dir.file("workers/w2.key")]
        let first = try startWorker(broker.backend, in: dir, name: "before", arguments: args)
        try first.waitForLog("registered with broker")
        first.child.signal(SIGTERM)
        _ = try first.waitForExit(timeout: 20)
        try FileManager.default.removeItem(atPath: dir.file("workers/w2.pub"))
        broker.process.child.signal(SIGHUP)
        try broker.process.waitForLog("SIGHUP: worker allowlist")
        let after = try startWorker(broker.backend, in: dir, name: "after", arguments: args)
        #expect(try after.waitForExit(timeout: 20) == .exited(4))
        #expect(after.log().contains("refused this worker's CURVE key"))
    }

    @Test("A non-loopback endpoint without CURVE is warned about at start")
    func plaintextOnTheNetworkIsWarned() throws {
        let dir = TempDir()
        let broker = try BrokerProcess(in: dir, frontend: "tcp://0.0.0.0:*")
        #expect(broker.process.log().contains("runs without CURVE"))
        let quiet = try BrokerProcess(in: dir, name: "quiet", frontend: "tcp://0.0.0.0:*", arguments: ["--insecure"])
        #expect(!quiet.process.log().contains("runs without CURVE"))
    }

    @Test("compass keys writes the secret file 0600 and refuses to overwrite")
    func keyFiles() throws {
        let dir = TempDir()
        let run = try Spawned("compass", ["keys", "new", "node", "--dir", dir.path], in: dir, name: "keys")
        #expect(try run.waitForExit(timeout: 20).isSuccess)
        let mode = try FileManager.default.attributesOfItem(atPath: dir.file("node.key"))[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let pub = try KeyFiles.loadPublic(dir.file("node.pub"))
        #expect(try KeyFiles.loadSecret(dir.file("node.key")).publicKey == pub)
        let again = try Spawned("compass", ["keys", "new", "node", "--dir", dir.path], in: dir, name: "again")
        #expect(try again.waitForExit(timeout: 20) == .exited(1))
        #expect(again.log().contains("exists"))
    }
}
