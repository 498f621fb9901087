import CompassProtocol

extension RequestRules {
    /// The request field a problem names: its message starts with it (`max_tokens must be …`,
    /// `messages[0].role must be …`); the two input messages name no single field (nil).
    /// Tested against every message of spec/requests.json.
    static func field(of problem: Problem) -> String? {
        let head = problem.message.prefix { $0 != " " && $0 != "[" && $0 != "." }
        return head == "give" ? nil : String(head)
    }
}
