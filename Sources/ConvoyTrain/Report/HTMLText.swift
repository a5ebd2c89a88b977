/// Text made safe for HTML/XML content and attribute values.
enum HTMLText {
    /// `text` with `&`, `<`, `>` and `"` replaced by entities XML knows (so the page stays XHTML-parsable).
    static func escaped(_ text: String) -> String {
        var result = ""
        result.reserveCapacity(text.count)
        for character in text {
            switch character {
            case "&": result += "&amp;"
            case "<": result += "&lt;"
            case ">": result += "&gt;"
            case "\"": result += "&quot;"
            default: result.append(character)
            }
        }
        return result
    }
}
