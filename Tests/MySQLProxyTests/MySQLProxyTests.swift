import XCTest
@testable import MySQLProxy
