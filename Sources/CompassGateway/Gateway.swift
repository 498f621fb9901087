/// The OpenAI-compatible gateway (issue #9): not built yet.
public enum Gateway {}
