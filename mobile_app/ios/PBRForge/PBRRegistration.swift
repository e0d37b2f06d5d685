// Registers three handheld photos onto the first before the model sees them, as the contract requires
// (`input_registration`): Vision's homographic registration of each photo onto the first, a perspective
// warp by Core Image, and one crop to the square all three cover. The desktop side is
// pbrforge/registration.py (SIFT + RANSAC); both give views of one rectified surface.
import CoreGraphics
import CoreImage
import Foundation
import Vision
import simd

enum PBRRegistration {
    /// The three views registered onto `views[0]`, each cropped to the same square; throws naming a photo
    /// Vision cannot register or whose warp is degenerate (mirrored, folded, or leaving too little overlap).
    static func register(_ views: [PBRView], minimumOverlap: CGFloat = 0.4) throws -> [PBRView] {
        guard views.count == 3 else { throw PBRError.badInput("need 3 views to register, got \(views.count)") }
        let reference = views[0]
        let extent = CGRect(x: 0, y: 0, width: reference.image.width, height: reference.image.height)
        var warped: [CIImage] = [CIImage(cgImage: reference.image).oriented(reference.orientation)]
        var common = extent
        for (index, view) in views.enumerated().dropFirst() {
            let request = VNHomographicImageRegistrationRequest(targetedCGImage: view.image,
                                                                orientation: view.orientation)
            try VNImageRequestHandler(cgImage: reference.image, orientation: reference.orientation)
                .perform([request])
            guard let observation = request.results?.first as? VNImageHomographicAlignmentObservation else {
                throw PBRError.badInput("view \(index + 1) could not be registered onto view 1")
            }
            // warpTransform maps the floating photo's pixels into the reference photo's pixels
            let h = observation.warpTransform
            guard simd_determinant(h) > 0 else {
                throw PBRError.badInput("view \(index + 1) registers with a mirrored or degenerate homography")
            }
            let image = CIImage(cgImage: view.image).oriented(view.orientation)
            let corners = [CGPoint(x: 0, y: 0), CGPoint(x: image.extent.width, y: 0),
                           CGPoint(x: image.extent.width, y: image.extent.height),
                           CGPoint(x: 0, y: image.extent.height)].map { apply(h, $0) }
            guard let filter = CIFilter(name: "CIPerspectiveTransform") else {
                throw PBRError.badInput("Core Image has no CIPerspectiveTransform")
            }
            filter.setValue(image, forKey: kCIInputImageKey)
            filter.setValue(CIVector(cgPoint: corners[3]), forKey: "inputTopLeft")
            filter.setValue(CIVector(cgPoint: corners[2]), forKey: "inputTopRight")
            filter.setValue(CIVector(cgPoint: corners[1]), forKey: "inputBottomRight")
            filter.setValue(CIVector(cgPoint: corners[0]), forKey: "inputBottomLeft")
            guard let output = filter.outputImage else {
                throw PBRError.badInput("view \(index + 1) could not be warped onto view 1")
            }
            warped.append(output)
            // the inner box of the warped quad is what this view covers for sure
            let xs = corners.map(\.x).sorted(), ys = corners.map(\.y).sorted()
            common = common.intersection(CGRect(x: xs[1], y: ys[1], width: xs[2] - xs[1], height: ys[2] - ys[1]))
        }
        let side = min(common.width, common.height)
        guard side >= minimumOverlap * min(extent.width, extent.height) else {
            throw PBRError.badInput("the three views overlap on too little of view 1 to register them")
        }
        let square = CGRect(x: common.midX - side / 2, y: common.midY - side / 2, width: side, height: side)
        let context = CIContext(options: [.workingColorSpace: CGColorSpace(name: CGColorSpace.sRGB)!])
        return try warped.map { image in
            guard let cropped = context.createCGImage(image.cropped(to: square), from: square) else {
                throw PBRError.badInput("cannot render a registered view")
            }
            return try PBRView(image: cropped)
        }
    }

    private static func apply(_ h: simd_float3x3, _ p: CGPoint) -> CGPoint {
        let q = h * simd_float3(Float(p.x), Float(p.y), 1)
        return CGPoint(x: CGFloat(q.x / q.z), y: CGFloat(q.y / q.z))
    }
}
