/// The two generation endpoints the gateway serves.
public enum Endpoint: String, Sendable, CaseIterable {
    case completions = "/v1/completions"
    case chat = "/v1/chat/completions"
}
