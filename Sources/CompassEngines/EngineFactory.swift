import CompassSystem
import Foundation
import Logging

/// What an engine is made from.
public struct EngineSettings: Sendable {
    public var arguments: [String: String] = [:]
    public var model = ""
    public var tp = 1
    public var gpus: [Int] = []
    public var workerLabel = ""
    public var hooks = EngineHooks()
    /// The environment the engine starts from (the worker's own, normally).
    public var environment: [String: String] = ChildProcess.environmentDictionary()

    public init() {}
}

/// Makes the engine a worker was asked for.
public enum EngineFactory {
    /// The engines compass knows.
    public static let names = ["synthetic", "hf", "vllm", "openai", "exec"]

    /// Engine arguments the worker itself reads instead of passing them on.
    static let hostArguments: Set<String> = ["python", "command"]

    public static func make(name: String, settings: EngineSettings, logger: Logger) throws -> any Engine {
        switch name {
        case "synthetic":
            return try SyntheticEngine(arguments: settings.arguments, workerLabel: settings.workerLabel)
        case "hf", "vllm", "openai":
            let python = pythonPath(settings)
            guard let directory = enginesDirectory(settings.environment) else {
                throw EngineConfigurationError(message: "cannot find the engine adapters (bin/engines); set COMPASS_ENGINES_DIR or COMPASS_HOME")
            }
            let script = "\(directory)/\(name)_engine.py"
            guard FileManager.default.fileExists(atPath: script) else {
                throw EngineConfigurationError(message: "the \(name) adapter \(script) is missing")
            }
            let command = EngineCommand(executable: python, arguments: [script], environment: environment(settings))
            return try ProcessEngine(name: name, command: command, logger: logger, hooks: settings.hooks)
        case "exec":
            guard let line = settings.arguments["command"], !line.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw EngineConfigurationError(message: "--engine exec needs --engine-arg command=PROGRAM (the engine to run; see docs/engines.md)")
            }
            let command = EngineCommand(executable: "/bin/sh", arguments: ["-c", "exec \(line)"], environment: environment(settings))
            return try ProcessEngine(name: "exec", command: command, logger: logger, hooks: settings.hooks)
        default:
            throw EngineConfigurationError(message: "unknown engine '\(name)'; choose one of \(names.joined(separator: ", "))")
        }
    }

    /// The engine's environment (docs/engines.md): the worker's, its GPU group, the protocol's fds,
    /// spawn-only multiprocessing, and NVLink multicast off unless the environment says otherwise.
    public static func environment(_ settings: EngineSettings) -> [String: String] {
        var env = settings.environment
        for (key, value) in ["PYTHONUNBUFFERED": "1", "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                             "NVSHMEM_DISABLE_NVLS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"] where env[key] == nil {
            env[key] = value
        }
        // Never fork after CUDA is initialised: vLLM's workers and every rank start by spawn.
        env["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID" // the same GPU numbering as NVML and the locks
        env["CUDA_VISIBLE_DEVICES"] = settings.gpus.map(String.init).joined(separator: ",")
        env["COMPASS_ENGINE_IN"] = "3"
        env["COMPASS_ENGINE_OUT"] = "4"
        env["COMPASS_MODEL"] = settings.model
        env["COMPASS_TP"] = "\(settings.tp)"
        env["COMPASS_GPUS"] = settings.gpus.map(String.init).joined(separator: ",")
        let passed = settings.arguments.filter { !hostArguments.contains($0.key) }
        let json = (try? JSONSerialization.data(withJSONObject: passed, options: [.sortedKeys])) ?? Data("{}".utf8)
        env["COMPASS_ENGINE_ARGS"] = String(decoding: json, as: UTF8.self)
        return env
    }

    /// `--engine-arg python=`, else $COMPASS_PYTHON, else the repository's .venv, else python3.
    static func pythonPath(_ settings: EngineSettings) -> String {
        if let python = settings.arguments["python"] { return python }
        if let python = settings.environment["COMPASS_PYTHON"], !python.isEmpty { return python }
        if let home = repositoryRoot(settings.environment), FileManager.default.isExecutableFile(atPath: "\(home)/.venv/bin/python") {
            return "\(home)/.venv/bin/python"
        }
        return "python3"
    }

    /// Where the Python adapters are: $COMPASS_ENGINES_DIR, $COMPASS_HOME/bin/engines, or the
    /// checkout the running binary was built in (.build/<triple>/<config>/ is three levels down).
    static func enginesDirectory(_ environment: [String: String]) -> String? {
        var candidates: [String] = []
        if let dir = environment["COMPASS_ENGINES_DIR"] { candidates.append(dir) }
        if let home = repositoryRoot(environment) { candidates.append("\(home)/bin/engines") }
        let exe = executableDirectory()
        candidates += ["\(exe)/engines", "\(exe)/../share/compass/engines"]
        return candidates.first { FileManager.default.fileExists(atPath: "\($0)/compass_engine.py") || FileManager.default.fileExists(atPath: "\($0)/example_engine.py") }
    }

    static func repositoryRoot(_ environment: [String: String]) -> String? {
        if let home = environment["COMPASS_HOME"] { return home }
        let candidate = URL(fileURLWithPath: executableDirectory()).appendingPathComponent("../../..").standardized.path
        return FileManager.default.fileExists(atPath: "\(candidate)/Package.swift") ? candidate : nil
    }

    static func executableDirectory() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return (exe as NSString).deletingLastPathComponent
    }
}
