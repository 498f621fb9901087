@testable import CompassLauncher
import CompassTopology
import Foundation
import Testing

/// A pool of tp=2 over one 8-GPU host, the case the cluster guides start from.
let eightGPUsTP2 = """
broker:
  frontend: tcp://127.0.0.1:5555
  backend: tcp://127.0.0.1:5556
pools:
  llama8b:
    engine: vllm
    model: /models/Llama-3.1-8B-Instruct
    tp: 2
    gpus: [0, 1, 2, 3, 4, 5, 6, 7]
    credit: 3
    engine_args:
      gpu_memory_utilization: 0.90
      max_model_len: 8192
    env:
      NCCL_DEBUG: WARN
    startup_timeout_ms: 1200000
"""

func renderOptions(_ address: String? = "head.cluster.example") -> RenderOptions {
    var options = RenderOptions()
    options.brokerAddress = address
    return options
}

@Suite("compass render slurm")
struct RenderSlurmTests {
    func script(_ yaml: String = eightGPUsTP2, _ options: RenderOptions = renderOptions()) throws -> String {
        let rendering = try Render.slurm(try Topology.parse(yaml), options: options)
        #expect(rendering.files.count == 1)
        return rendering.files[0].contents
    }

    @Test func eightGPUsWithTP2MakeAnArrayOfFourTasksOfTwoGPUs() throws {
        let rendering = try Render.slurm(try Topology.parse(eightGPUsTP2), options: renderOptions())
        #expect(rendering.files.map(\.name) == ["compass-llama8b.sbatch"])
        #expect(rendering.files[0].executable)
        let text = rendering.files[0].contents
        let directives = text.split(separator: "\n").filter { $0.hasPrefix("#SBATCH ") }.map { String($0.dropFirst(8)) }
        #expect(directives.contains("--array=0-3"))
        #expect(directives.contains("--gres=gpu:2"))
        #expect(directives.contains("--job-name=compass-llama8b"))
        #expect(directives.contains("--cpus-per-task=8"))
        #expect(directives.contains("--nodes=1"))
        #expect(directives.contains("--ntasks=1"))
        #expect(directives.contains("--output=compass-llama8b-%A_%a.out"))
        #expect(directives.contains("--signal=B:TERM@90"))
        #expect(text.hasPrefix("#!/bin/bash\n"))
        #expect(text.contains("\nexec compass-worker \\\n"))
        #expect(text.contains("  --broker tcp://head.cluster.example:5556 \\\n"))
        #expect(text.contains("  --tp 2 \\\n"))
        #expect(text.contains("  --gpus auto \\\n"))
        for line in ["export VLLM_WORKER_MULTIPROC_METHOD=spawn", "export NCCL_NVLS_ENABLE=0",
                     "export TORCH_SYMM_MEM_DISABLE_MULTICAST=1", "export NVSHMEM_DISABLE_NVLS=1", "export NCCL_DEBUG=WARN"] {
            #expect(text.contains("\n\(line)\n"), "\(line)")
        }
    }

    @Test func everySBATCHDirectiveComesBeforeTheFirstCommand() throws {
        // sbatch stops reading directives at the first line that is neither a comment nor blank.
        let lines = try script().split(separator: "\n", omittingEmptySubsequences: false)
        let firstCommand = lines.dropFirst().firstIndex { !$0.hasPrefix("#") && !$0.trimmingCharacters(in: .whitespaces).isEmpty }!
        let lastDirective = lines.lastIndex { $0.hasPrefix("#SBATCH") }!
        #expect(lastDirective < firstCommand)
    }

    @Test func bashAcceptsTheScript() throws {
        let dir = RenderTempDir()
        var options = renderOptions()
        options.partition = "gpu"
        options.timeLimit = "2-00:00:00"
        options.memory = "200G"
        options.account = "evals"
        let text = try script(eightGPUsTP2, options)
        #expect(text.contains("\n#SBATCH --partition=gpu\n"))
        #expect(text.contains("\n#SBATCH --time=2-00:00:00\n"))
        #expect(text.contains("\n#SBATCH --mem=200G\n"))
        #expect(text.contains("\n#SBATCH --account=evals\n"))
        let path = try dir.write("job.sbatch", text)
        let run = try RenderProcess.run(RenderProcess.bash, ["-n", path])
        #expect(run.status == 0, "\(run.stderr)")
    }

    /// Runs the script with a stand-in compass-worker that prints the arguments and environment it
    /// got: what the shell makes of the quoting is what the worker would see.
    func runWithStandIn(_ text: String) throws -> (arguments: [String], environment: [String: String], run: RenderRun) {
        let dir = RenderTempDir()
        try FileManager.default.createDirectory(atPath: dir.file("bin"), withIntermediateDirectories: true)
        try dir.write("bin/compass-worker", """
        #!/bin/bash
        for a in "$@"; do printf 'ARG %s\\n' "$a"; done
        env | sed 's/^/ENV /'
        """, executable: true)
        let path = try dir.write("job.sbatch", text)
        let run = try RenderProcess.run(RenderProcess.bash, [path], environment: [
            "PATH": "\(dir.file("bin")):/usr/bin:/bin", "SLURM_JOB_ID": "4242", "TMPDIR": dir.path])
        var arguments: [String] = []
        var environment: [String: String] = [:]
        for line in run.stdout.split(separator: "\n") {
            if line.hasPrefix("ARG ") { arguments.append(String(line.dropFirst(4))) }
            if line.hasPrefix("ENV "), let eq = line.firstIndex(of: "=") {
                environment[String(line[line.index(line.startIndex, offsetBy: 4)..<eq])] = String(line[line.index(after: eq)...])
            }
        }
        return (arguments, environment, run)
    }

    @Test func theWorkerGetsPlansCommandLineWithTheRemoteBrokerAndGPUsAuto() throws {
        let topology = try Topology.parse(eightGPUsTP2)
        let (arguments, environment, run) = try runWithStandIn(try script())
        #expect(run.status == 0, "\(run.stderr)")
        // The same flags as `compass up` runs (Plan.processes), but for the broker, the GPUs and the drain.
        let planned = Plan.processes(for: topology, binDirectory: "/bin", logLevel: "info")
            .first { $0.name == "llama8b.0" }!.arguments
        var expected = planned
        expected[expected.firstIndex(of: "--broker")! + 1] = "tcp://head.cluster.example:5556"
        expected[expected.firstIndex(of: "--gpus")! + 1] = "auto"
        expected += ["--drain-ms", "55000"]
        #expect(arguments == expected)
        #expect(arguments.contains("--engine-arg"))
        #expect(arguments.contains("gpu_memory_utilization=0.90"))
        #expect(arguments.contains("--model"))
        #expect(environment["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn")
        #expect(environment["NCCL_NVLS_ENABLE"] == "0")
        #expect(environment["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1")
        #expect(environment["NVSHMEM_DISABLE_NVLS"] == "1")
        #expect(environment["NCCL_DEBUG"] == "WARN")
        #expect(environment["COMPASS_LOCK_DIR"]?.hasSuffix("/compass-gpu-locks.4242") == true)
    }

    @Test func awkwardValuesReachTheWorkerIntact() throws {
        let yaml = """
        broker:
          backend: tcp://broker.internal:7000
        pools:
          odd:
            engine: exec
            engine_args:
              command: "python3 -c 'print(\\"hi $HOME\\")' # not a comment"
            env:
              MESSAGE: "it's $HOME `x` \\\\ done"
              NCCL_NVLS_ENABLE: "1"
        """
        var options = renderOptions(nil)
        options.workerExecutable = "compass-worker"
        let text = try script(yaml, options)
        let (arguments, environment, run) = try runWithStandIn(text)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(arguments.contains("command=python3 -c 'print(\"hi $HOME\")' # not a comment"))
        #expect(arguments[arguments.firstIndex(of: "--broker")! + 1] == "tcp://broker.internal:7000")
        #expect(environment["MESSAGE"] == "it's $HOME `x` \\ done")
        // The pool's env wins over the defaults.
        #expect(environment["NCCL_NVLS_ENABLE"] == "1")
        #expect(!text.contains("NCCL_NVLS_ENABLE=0"))
        // No GPUs: no --gres, no --gpus, no lock directory.
        #expect(!text.contains("--gres"))
        #expect(!arguments.contains("--gpus"))
        #expect(text.contains("#SBATCH --cpus-per-task=2\n"))
    }

    @Test func onePoolOneScriptWithItsOwnArray() throws {
        let rendering = try Render.slurm(try Topology.parse("""
        pools:
          big:
            engine: vllm
            model: /m/70b
            tp: 8
            gpus: [0, 1, 2, 3, 4, 5, 6, 7]
          small:
            engine: hf
            model: /m/1b
            gpus: [8, 9, 10]
          cpu:
            workers: 5
        """), options: renderOptions())
        #expect(rendering.files.map(\.name) == ["compass-big.sbatch", "compass-small.sbatch", "compass-cpu.sbatch"])
        let texts = rendering.files.map(\.contents)
        #expect(texts[0].contains("#SBATCH --array=0-0\n") && texts[0].contains("#SBATCH --gres=gpu:8\n"))
        #expect(texts[0].contains("#SBATCH --cpus-per-task=32\n"))
        #expect(texts[1].contains("#SBATCH --array=0-2\n") && texts[1].contains("#SBATCH --gres=gpu:1\n"))
        #expect(texts[2].contains("#SBATCH --array=0-4\n") && !texts[2].contains("--gres"))
        let dir = RenderTempDir()
        for file in rendering.files {
            let run = try RenderProcess.run(RenderProcess.bash, ["-n", try dir.write(file.name, file.contents)])
            #expect(run.status == 0, "\(file.name): \(run.stderr)")
        }
    }

    @Test func drainTimeFollowsTheOption() throws {
        var options = renderOptions()
        options.drainSeconds = 600
        let text = try script(eightGPUsTP2, options)
        #expect(text.contains("#SBATCH --signal=B:TERM@600\n"))
        #expect(text.contains("  --drain-ms 55000\n"))
        options.drainSeconds = 45
        #expect(try script(eightGPUsTP2, options).contains("  --drain-ms 25000\n"))
        options.drainSeconds = 10
        #expect(throws: RenderError.self) { try script(eightGPUsTP2, options) }
    }

    @Test func anEnvNameAShellCannotExportIsRefused() throws {
        let yaml = "pools:\n  a:\n    env:\n      BAD-NAME: x\n"
        do {
            _ = try script(yaml)
            Issue.record("expected an error")
        } catch let error as RenderError {
            #expect(error.message.contains("BAD-NAME"))
        }
    }
}

@Suite("compass render: the broker's address")
struct RenderBrokerAddressTests {
    func endpoint(_ backend: String, _ address: String?, service: String? = nil) throws -> (String, [String]) {
        let topology = try Topology.parse("broker:\n  backend: \(backend)\npools:\n  a: {}\n")
        return try Render.workerBrokerEndpoint(topology, address: address, serviceHost: service, scheduler: "Slurm", source: "t.yaml")
    }

    func message(_ backend: String, _ address: String?) -> String {
        do {
            _ = try endpoint(backend, address)
            return ""
        } catch {
            return "\(error)"
        }
    }

    @Test func aLoopbackBackendNeedsAnAddressAndTheErrorSaysWhy() {
        let text = message("tcp://127.0.0.1:5556", nil)
        #expect(text.contains("--broker-address HOST"))
        #expect(text.contains("loopback"))
        #expect(text.contains("tcp://0.0.0.0:5556"))
        #expect(message("tcp://localhost:5556", nil).contains("--broker-address"))
        #expect(message("tcp://0.0.0.0:5556", nil).contains("wildcard"))
        #expect(message("tcp://*:5556", nil).contains("wildcard"))
    }

    @Test func anIPCBackendNeedsTCP() {
        let text = message("ipc:///tmp/compass.sock", nil)
        #expect(text.contains("ipc:///tmp/compass.sock"))
        #expect(text.contains("--broker-address"))
        #expect(text.contains("bind TCP"))
        // HOST alone cannot say which port; HOST:PORT can.
        #expect(message("ipc:///tmp/compass.sock", "head").contains("HOST:PORT"))
        #expect((try? endpoint("ipc:///tmp/compass.sock", "head:7000").0) == "tcp://head:7000")
    }

    @Test func theAddressReplacesTheHostAndKeepsThePort() throws {
        let (ep, notes) = try endpoint("tcp://127.0.0.1:5556", "head")
        #expect(ep == "tcp://head:5556")
        // The broker binds loopback: the note says to bind 0.0.0.0.
        #expect(notes.count == 1 && notes[0].contains("tcp://0.0.0.0:5556"))
        #expect(try endpoint("tcp://0.0.0.0:5556", "10.0.0.5:6000") == ("tcp://10.0.0.5:6000", []))
        #expect(try endpoint("tcp://0.0.0.0:5556", "tcp://head:5556").0 == "tcp://head:5556")
        #expect(try endpoint("tcp://0.0.0.0:5556", "fd00::1").0 == "tcp://[fd00::1]:5556")
        #expect(try endpoint("tcp://0.0.0.0:5556", "[fd00::1]:7").0 == "tcp://[fd00::1]:7")
        #expect(message("tcp://0.0.0.0:5556", "0.0.0.0").contains("wildcard"))
        #expect(message("tcp://0.0.0.0:5556", "head:http").contains("port"))
        #expect(message("tcp://0.0.0.0:5556", "ipc:///x").contains("TCP"))
    }

    @Test func aReachableBackendIsUsedAsItIs() throws {
        #expect(try endpoint("tcp://broker.internal:5556", nil) == ("tcp://broker.internal:5556", []))
        #expect(try endpoint("tcp://127.0.0.1:5556", nil, service: "compass-broker").0 == "tcp://compass-broker:5556")
    }
}
