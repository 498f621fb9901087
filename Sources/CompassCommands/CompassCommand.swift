import ArgumentParser

/// `compass`: the command-line tool.
public struct CompassCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "compass",
        abstract: "Run LLM prompt batches on pools of GPU workers through a ZeroMQ broker.",
        discussion: """
        Start a cluster from topology.yaml with 'compass up', push a JSONL file of prompts with \
        'compass submit', and look at it with 'compass status'. 'compass demo' does all three on the \
        built-in synthetic engine and stops.
        """,
        subcommands: [DemoCommand.self, UpCommand.self, SubmitCommand.self, StatusCommand.self, JournalCommand.self,
                      KeysCommand.self, GatewayCommand.self, RenderCommand.self])

    public init() {}
}
