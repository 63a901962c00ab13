// A credentials provider asked again, after a backoff, when it finds none.
//
// STS refuses calls past an account's rate (HTTP 400, Throttling): a job's ranks and their
// DataLoader workers starting together under EKS IRSA, each fetching credentials, meet it. boto3
// asks STS again after a backoff; the CRT's web identity provider asks again only for two other
// codes (IDPCommunicationError, InvalidIdentityToken) and at once, and its AssumeRole provider
// never for a 400, so the first request of such a process failed for want of credentials. The
// providers that reach STS are wrapped in this one, which asks the provider again up to
// kCredentialsAttempts times in all, waiting a random time of up to 1, 2, 4, 8 s before each
// (botocore's legacy retries of STS: full jitter), then reports its last failure: a role that
// STS refuses for good (a wrong ARN, a trust policy) fails after 7.5 s on average, 15 s at most.
//
// Threads: fetches start on the thread that asks (a signing request's) and their retries run on
// the runtime's event loops.
#pragma once

struct aws_client_bootstrap;
struct aws_credentials_provider;

namespace s3torch {

// Attempts of one fetch, the first included.
constexpr int kCredentialsAttempts = 5;

// Whether a fetch of this process is between attempts or on a later one: a request waiting
// for it is not yet signed, so the never-answered watchdog (transfer.h) waits on.
bool credentials_retrying();

// `source` asked again as above (takes the caller's reference to it; returns a new provider the
// caller owns), or nullptr when `source` is nullptr or the provider cannot be made (`source`
// released). Retries wait on the event loops of `bootstrap`.
aws_credentials_provider *with_retries(aws_credentials_provider *source, aws_client_bootstrap *bootstrap);

}  // namespace s3torch
