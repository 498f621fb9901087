/// Makes the engine a worker was asked for.
public enum EngineFactory {
    /// The engines compass knows.
    public static let names = ["synthetic", "hf", "vllm", "openai", "exec"]

    public static func make(name: String, arguments: [String: String], model: String, tp: Int, gpus: [Int],
                            workerLabel: String) throws -> any Engine {
        switch name {
        case "synthetic":
            return try SyntheticEngine(arguments: arguments, workerLabel: workerLabel)
        case "hf", "vllm", "openai", "exec":
            throw EngineConfigurationError(message: "engine '\(name)' is not available in this build yet")
        default:
            throw EngineConfigurationError(message: "unknown engine '\(name)'; choose one of \(names.joined(separator: ", "))")
        }
    }
}
