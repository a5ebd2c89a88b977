import ConvoyTensor

/// The check that keeps NaN and infinite values out of loaded weights and optimizer state.
///
/// A run that diverged can save a checkpoint full of NaN; loading it would evaluate, generate or resume
/// with garbage and no error. Every loader refuses such a tensor by name instead.
public enum FiniteValues {
    /// Throws unless every element of `tensor` is finite.
    ///
    /// - Throws: ``ConvoyError/malformedFile(path:reason:)`` naming the tensor, the first bad value and its
    ///   position.
    public static func check(_ tensor: Tensor, name: String, in path: String) throws {
        let values = tensor.converted(to: .float32).toArray()
        guard let index = values.firstIndex(where: { !$0.isFinite }) else { return }
        throw ConvoyError.malformedFile(path: path, reason: "tensor '\(name)' holds \(values[index]) at element \(index) (\(values.filter { !$0.isFinite }.count) non-finite values in all): it was saved from a run that diverged; use an earlier checkpoint")
    }
}
