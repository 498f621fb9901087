import ArgumentParser

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Serve an OpenAI-compatible HTTP API in front of the broker (not built yet).")

    func run() async throws {
        throw fail("compass gateway", "the gateway is not built yet")
    }
}
