import Testing
@testable import ConciergeAWS
