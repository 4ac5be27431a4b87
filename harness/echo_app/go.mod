module e5s-proxy/harness/echo_app

go 1.22
