#include "netwatch.h"

#include <errno.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const int groups[] = {
	RTNLGRP_LINK,	    RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR,
	RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE,
};

int nbe_netwatch_open(void)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK }; /* no groups yet */
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);

	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

int nbe_netwatch_listen(int fd, bool on)
{
	int opt = on ? NETLINK_ADD_MEMBERSHIP : NETLINK_DROP_MEMBERSHIP;
	size_t n = sizeof(groups) / sizeof(groups[0]);
	char buf[4096];

	for (size_t i = 0; i < n; i++) {
		if (setsockopt(fd, SOL_NETLINK, opt, &groups[i], sizeof(groups[i])) != 0) {
			int e = -errno;
			if (on) {
				while (i-- > 0)
					setsockopt(fd, SOL_NETLINK, NETLINK_DROP_MEMBERSHIP,
						   &groups[i], sizeof(groups[i]));
			}
			return e;
		}
	}
	if (!on) {
		/* what arrived while joined is of no use any more */
		for (;;) {
			ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (r > 0 || (r < 0 && (errno == EINTR || errno == ENOBUFS)))
				continue;
			break;
		}
	}
	return 0;
}

int nbe_netwatch_read(int fd)
{
	char buf[8192] __attribute__((aligned(__alignof__(struct nlmsghdr))));
	int up = 0;

	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		struct nlmsghdr *h;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return up;
			if (errno == ENOBUFS)
				return 1; /* overrun: something happened, assume the best */
			return -errno;
		}
		for (h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
			/* link-local addresses (IPv6 DAD finishing) and local or
			 * host routes say nothing about reaching a server */
			if (h->nlmsg_type == RTM_NEWADDR &&
			    h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct ifaddrmsg))) {
				const struct ifaddrmsg *ifa = NLMSG_DATA(h);
				if (ifa->ifa_scope == RT_SCOPE_UNIVERSE)
					up = 1;
			} else if (h->nlmsg_type == RTM_NEWROUTE &&
				   h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct rtmsg))) {
				const struct rtmsg *rt = NLMSG_DATA(h);
				if (rt->rtm_table == RT_TABLE_MAIN && rt->rtm_type == RTN_UNICAST &&
				    rt->rtm_scope == RT_SCOPE_UNIVERSE)
					up = 1;
			} else if (h->nlmsg_type == RTM_NEWLINK &&
				   h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct ifinfomsg))) {
				const struct ifinfomsg *ifi = NLMSG_DATA(h);
				if ((ifi->ifi_flags & IFF_UP) && (ifi->ifi_flags & IFF_RUNNING) &&
				    !(ifi->ifi_flags & IFF_LOOPBACK))
					up = 1;
			}
		}
	}
}
