// inboxd/version.hpp: the library version.
#pragma once

#define INBOXD_VERSION "0.1.0"
