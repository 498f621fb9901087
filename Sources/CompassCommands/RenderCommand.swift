import ArgumentParser
import CompassLauncher
import CompassTopology
import Foundation

struct RenderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "render",
        abstract: "Write job specs for a topology's workers: Slurm batch scripts or Kubernetes Deployments.",
        discussion: """
        One job per tensor-parallel group, each running 'compass-worker --tp N' against the broker. \
        slurm: one batch script per pool, a job array with one task per group (--gres=gpu:N, --gpus auto). \
        k8s: one Deployment per pool, one replica per group (nvidia.com/gpu: N); --with-broker adds the \
        broker's Deployment and Service. The jobs run on other hosts than the broker, so when the \
        topology's broker.backend is a loopback, wildcard or ipc:// endpoint, give --broker-address: \
        the broker host as the workers see it.
        """)

    @Argument(help: "Which scheduler: slurm or k8s.") var target: String
    @Argument(help: "The topology file.") var topology = "topology.yaml"
    @Option(help: "Directory to write the files to (created if missing), or '-' for standard output (default: compass-TARGET).")
    var out: String?
    @Option(help: "The broker's backend as workers on other hosts reach it: HOST, HOST:PORT or tcp://HOST:PORT (the port defaults to broker.backend's).")
    var brokerAddress: String?
    @Option(help: "The worker executable as jobs run it.") var workerPath = "compass-worker"
    @Option(help: "Seconds from SIGTERM to the scheduler's kill: the worker drains within them (Slurm --signal, Kubernetes terminationGracePeriodSeconds).")
    var drainSeconds = 90
    @Option(help: "The workers' --log-level.") var logLevel = "info"
    @Option(help: "Slurm: the partition.") var partition: String?
    @Option(help: "Slurm: the account.") var account: String?
    @Option(help: "Slurm: the time limit (e.g. 24:00:00).") var time: String?
    @Option(help: "Slurm: CPUs per task (default 4 per GPU, 2 without GPUs).") var cpusPerTask: Int?
    @Option(help: "Slurm: host memory per task (e.g. 200G; default: the cluster's).") var mem: String?
    @Option(help: "Kubernetes: the container image; it must hold compass and the engine's Python stack.") var image = "compass:latest"
    @Option(help: "Kubernetes: the namespace (default: kubectl's current one).") var namespace: String?
    @Flag(help: "Kubernetes: also the broker's Deployment and Service; workers then reach it at tcp://compass-broker:PORT.")
    var withBroker = false

    func validate() throws {
        guard Render.targets.contains(target) else {
            throw ValidationError("unknown target '\(target)': use slurm or k8s")
        }
        if withBroker && target != "k8s" { throw ValidationError("--with-broker is for k8s") }
    }

    func run() throws {
        let loaded: Topology
        do {
            loaded = try Topology.load(path: topology)
        } catch let error as TopologyError {
            throw fail("compass render", "\(topology) is not valid:\n\(error)", code: 2)
        }
        var options = RenderOptions()
        options.brokerAddress = brokerAddress
        options.workerExecutable = workerPath
        options.drainSeconds = drainSeconds
        options.logLevel = logLevel
        options.source = (topology as NSString).lastPathComponent
        options.partition = partition
        options.account = account
        options.timeLimit = time
        options.cpusPerTask = cpusPerTask
        options.memory = mem
        options.image = image
        options.namespace = namespace
        options.includeBroker = withBroker
        let rendering: Rendering
        do {
            rendering = try Render.render(target, loaded, options: options)
        } catch let error as RenderError {
            throw fail("compass render", error.message, code: 2)
        }
        for note in rendering.notes {
            FileHandle.standardError.write(Data("compass render: note: \(note)\n".utf8))
        }
        let directory = out ?? "compass-\(target)"
        if directory == "-" {
            let separator = target == "k8s" ? "---\n" : ""
            print(rendering.files.map { separator + "# \($0.name)\n" + $0.contents }.joined(separator: "\n"), terminator: "")
            return
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for file in rendering.files {
            let path = (directory as NSString).appendingPathComponent(file.name)
            try file.contents.write(toFile: path, atomically: true, encoding: .utf8)
            if file.executable { try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path) }
            print("wrote \(path)")
        }
        if target == "slurm" {
            print("submit with: " + rendering.files.map { "sbatch \((directory as NSString).appendingPathComponent($0.name))" }.joined(separator: "; "))
        } else {
            print("apply with: kubectl apply -f \(directory)")
        }
    }
}
