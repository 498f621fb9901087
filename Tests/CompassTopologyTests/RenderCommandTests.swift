import CompassSystem
import Foundation
import Testing
import Yams

#if canImport(Glibc)
import Glibc
#endif

/// A process run to completion for a render test: exit status and both outputs.
struct RenderRun {
    var status: Int32
    var stdout: String
    var stderr: String
}

enum RenderProcess {
    /// Runs `executable` with `arguments` (environment: ours plus `environment`) and waits for it.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                    directory: String? = nil) throws -> RenderRun {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let dir = NSTemporaryDirectory() + "compass-render-run-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Files rather than pipes: no deadlock whatever the output's size.
        FileManager.default.createFile(atPath: "\(dir)/out", contents: nil)
        FileManager.default.createFile(atPath: "\(dir)/err", contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(dir)/out"))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(dir)/err"))
        process.standardOutput = out
        process.standardError = err
        try process.run()
        process.waitUntilExit()
        try out.close()
        try err.close()
        return RenderRun(status: process.terminationStatus,
                         stdout: (try? String(contentsOfFile: "\(dir)/out", encoding: .utf8)) ?? "",
                         stderr: (try? String(contentsOfFile: "\(dir)/err", encoding: .utf8)) ?? "")
    }

    /// `bash` on this machine.
    static var bash: String {
        ["/bin/bash", "/usr/bin/bash"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/bin/bash"
    }

    /// The built `compass` executable, next to the test bundle (or in COMPASS_BIN_DIR).
    static func compass() -> String? {
        let dir: String
        if let env = ProcessInfo.processInfo.environment["COMPASS_BIN_DIR"] {
            dir = env
        } else {
            let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
            dir = (exe as NSString).deletingLastPathComponent
        }
        let path = "\(dir)/compass"
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }
}

/// A temporary directory removed when released.
final class RenderTempDir {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "compass-render-" + UUID().uuidString.prefix(8)
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    @discardableResult
    func write(_ name: String, _ text: String, executable: Bool = false) throws -> String {
        let path = file(name)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        if executable { try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path) }
        return path
    }
}

/// The built `compass render` as a user runs it.
@Suite("compass render (the command)")
struct RenderCommandTests {
    func compass() throws -> String {
        try #require(RenderProcess.compass(), "the compass executable is missing: build everything first (swift build --build-tests)")
    }

    @Test func writesOneScriptPerPoolThatBashAccepts() throws {
        let dir = RenderTempDir()
        let topology = try dir.write("topology.yaml", eightGPUsTP2)
        let run = try RenderProcess.run(try compass(), ["render", "slurm", topology, "--out", dir.file("out"),
                                                         "--broker-address", "head.cluster.example", "--time", "24:00:00"])
        #expect(run.status == 0, "\(run.stderr)")
        let script = dir.file("out/compass-llama8b.sbatch")
        #expect(run.stdout.contains("wrote \(script)"))
        #expect(run.stdout.contains("sbatch \(script)"))
        // The broker binds loopback in this topology: the user is told.
        #expect(run.stderr.contains("note:") && run.stderr.contains("0.0.0.0"))
        #expect(FileManager.default.isExecutableFile(atPath: script))
        let text = try String(contentsOfFile: script, encoding: .utf8)
        #expect(text.contains("#SBATCH --array=0-3\n") && text.contains("#SBATCH --time=24:00:00\n"))
        let check = try RenderProcess.run(RenderProcess.bash, ["-n", script])
        #expect(check.status == 0, "\(check.stderr)")
    }

    @Test func aLoopbackBrokerWithoutAnAddressExplainsWhatToGive() throws {
        let dir = RenderTempDir()
        let topology = try dir.write("topology.yaml", eightGPUsTP2)
        let run = try RenderProcess.run(try compass(), ["render", "k8s", topology, "--out", dir.file("out")])
        #expect(run.status == 2)
        #expect(run.stderr.contains("compass render: error: broker.backend in topology.yaml is tcp://127.0.0.1:5556"), "\(run.stderr)")
        #expect(run.stderr.contains("--broker-address HOST"))
        #expect(!FileManager.default.fileExists(atPath: dir.file("out")))
    }

    @Test func kubernetesToStandardOutput() throws {
        let dir = RenderTempDir()
        let topology = try dir.write("topology.yaml", eightGPUsTP2)
        let run = try RenderProcess.run(try compass(), ["render", "k8s", topology, "--out", "-", "--with-broker", "--image", "reg/compass:1"])
        #expect(run.status == 0, "\(run.stderr)")
        let docs = try Yams.load_all(yaml: run.stdout).compactMap { $0 as? [String: Any] }
        #expect(docs.compactMap { $0["kind"] as? String } == ["Service", "Deployment", "Deployment"])
    }

    /// Waits until `file` contains `text`, or `seconds` pass.
    func waitFor(_ text: String, in file: String, seconds: Double) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let content = try? String(contentsOfFile: file, encoding: .utf8), content.contains(text) { return true }
            try await Task.sleep(nanoseconds: 50_000_000)  // not usleep: the tests' shared threads stay free
        }
        return false
    }

    /// Starts `executable` with a clean signal mask (ChildProcess: posix_spawn, SIGTERM not blocked,
    /// which Foundation's Process does not promise), output to `log`, in its own process group.
    func spawn(_ executable: String, _ arguments: [String], log: String, environment: [String: String] = [:]) throws -> ChildProcess {
        var env = ChildProcess.environmentDictionary()
        for (k, v) in environment { env[k] = v }
        return try ChildProcess(executable: executable, arguments: arguments, environment: env, newProcessGroup: true,
                                files: [.open(path: log, flags: O_WRONLY | O_CREAT | O_APPEND, as: 1),
                                        .open(path: log, flags: O_WRONLY | O_CREAT | O_APPEND, as: 2)])
    }

    @Test func theSlurmScriptRunsTheRealWorkerWhichDrainsOnSIGTERM() async throws {
        let compass = try compass()
        let bin = (compass as NSString).deletingLastPathComponent
        let dir = RenderTempDir()
        // A real broker on free ports; its first line names them.
        let broker = try spawn("\(bin)/compass-broker", ["--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*", "--pool", "default"],
                               log: dir.file("broker.log"))
        defer { broker.signalGroup(SIGKILL); _ = broker.wait(timeoutSeconds: 10) }
        #expect(try await waitFor("compass-broker listening", in: dir.file("broker.log"), seconds: 30))
        let line = try #require(try String(contentsOfFile: dir.file("broker.log"), encoding: .utf8)
            .split(separator: "\n").first { $0.hasPrefix("compass-broker listening") })
        let backend = try #require(line.split(separator: " ").first { $0.hasPrefix("backend=") }).dropFirst(8)
        let port = try #require(backend.split(separator: ":").last.map(String.init))

        let topology = try dir.write("topology.yaml", "broker:\n  backend: tcp://127.0.0.1:\(port)\npools:\n  default:\n    workers: 1\n")
        let render = try RenderProcess.run(compass, ["render", "slurm", topology, "--out", dir.file("slurm"), "--broker-address", "127.0.0.1"])
        #expect(render.status == 0, "\(render.stderr)")

        // As Slurm would: bash runs the script; exec makes that very process the worker.
        let job = try spawn(RenderProcess.bash, [dir.file("slurm/compass-default.sbatch")], log: dir.file("job.log"), environment: [
            "PATH": "\(bin):" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"), "SLURM_JOB_ID": "99"])
        defer { job.signalGroup(SIGKILL); _ = job.wait(timeoutSeconds: 10) }
        #expect(try await waitFor("registered with broker", in: dir.file("job.log"), seconds: 30))
        let command = try String(contentsOfFile: "/proc/\(job.pid)/comm", encoding: .utf8)
        #expect(command.hasPrefix("compass-worker"), "the script's process runs \(command)")
        job.signal(SIGTERM)
        #expect(job.wait(timeoutSeconds: 30) == .exited(0))
        let log = try String(contentsOfFile: dir.file("job.log"), encoding: .utf8)
        #expect(log.contains("SIGTERM: draining"), "\(log)")
        #expect(log.contains("worker stopped"), "\(log)")
    }

    @Test func anInvalidTopologyOrTargetIsRefused() throws {
        let dir = RenderTempDir()
        let bad = try dir.write("bad.yaml", "pools:\n  a:\n    tp: 3\n    gpus: [0, 1]\n")
        let run = try RenderProcess.run(try compass(), ["render", "slurm", bad, "--broker-address", "h"])
        #expect(run.status == 2)
        #expect(run.stderr.contains("bad.yaml:4:"), "\(run.stderr)")
        let target = try RenderProcess.run(try compass(), ["render", "pbs", bad])
        #expect(target.status != 0)
        #expect(target.stderr.contains("slurm or k8s"), "\(target.stderr)")
    }
}
