import XCTest
@testable import MySQLWire
