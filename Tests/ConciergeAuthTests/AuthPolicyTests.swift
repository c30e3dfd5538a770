import ConciergeAuth
import Testing

@Suite struct AuthPolicyTests {
    @Test func aPlaintextClientIsRefusedFirstWhenTLSIsRequired() {
        let policy = AuthPolicy(requireTLS: true)
        // Even an over-full proxy answers a plaintext client with the TLS error.
        #expect(policy.admit(clientUsesTLS: false, clientLimitExceeded: true, iamRequired: true)
            == .refuse(.tlsRequired, countsAsFailedAuth: true))
        #expect(policy.admit(clientUsesTLS: true, clientLimitExceeded: false, iamRequired: false) == .password)
    }

    @Test func beyondTheClientLimitTheLoginIsRefusedWithoutCountingAnAuthFailure() {
        let policy = AuthPolicy(requireTLS: false)
        #expect(policy.admit(clientUsesTLS: false, clientLimitExceeded: true, iamRequired: false)
            == .refuse(.tooManyClients, countsAsFailedAuth: false))
        #expect(policy.admit(clientUsesTLS: true, clientLimitExceeded: true, iamRequired: true)
            == .refuse(.tooManyClients, countsAsFailedAuth: false))
    }

    @Test func anIAMUserNeedsTLSForItsToken() {
        let policy = AuthPolicy(requireTLS: false)
        #expect(policy.admit(clientUsesTLS: true, clientLimitExceeded: false, iamRequired: true) == .iamToken)
        #expect(policy.admit(clientUsesTLS: false, clientLimitExceeded: false, iamRequired: true)
            == .refuse(.iamRequiresTLS, countsAsFailedAuth: true))
    }

    @Test func everyoneElseProvesThePassword() {
        for requireTLS in [false, true] {
            #expect(AuthPolicy(requireTLS: requireTLS).admit(clientUsesTLS: true, clientLimitExceeded: false, iamRequired: false)
                == .password)
        }
        #expect(AuthPolicy(requireTLS: false).admit(clientUsesTLS: false, clientLimitExceeded: false, iamRequired: false)
            == .password)
    }
}
