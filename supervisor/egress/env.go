package egress

// ChildEnv is the environment that points the agent's tools at the proxy (proxyURL,
// e.g. http://10.200.0.1:3128) and, when caFile is non-empty, makes them trust the
// sandbox CA (a PEM bundle holding the system roots plus the sandbox CA, so that
// tools replacing rather than extending their trust store keep working).
func ChildEnv(proxyURL, caFile string) []string {
	env := []string{}
	noProxy := "localhost,127.0.0.1,::1"
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"} {
		env = append(env, k+"="+proxyURL)
	}
	for _, k := range []string{"http_proxy", "https_proxy", "all_proxy"} {
		env = append(env, k+"="+proxyURL)
	}
	env = append(env, "NO_PROXY="+noProxy, "no_proxy="+noProxy)
	if caFile != "" {
		for _, k := range []string{"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO"} {
			env = append(env, k+"="+caFile)
		}
	}
	return env
}
