// Site geography (claims 5-7): how far each remote mirror site is from the local (primary)
// site, whether any is closer than 25 miles, and, with exactly two mirrors, how close they
// are to "substantially diametrically opposed" as seen from the primary. Pure: numbers in,
// a report out; the site layer logs it at start.
//
// Distances are great-circle (haversine) on a sphere of the Earth's mean radius; the
// spherical model is within 0.5% of the ellipsoid, far finer than the 25-mile rule needs.

/** IUGG mean Earth radius. */
export const earthRadiusKm = 6371.0088;
export const kmPerMile = 1.609344;
/** Claims 5 and 7: remote sites at least (approximately) 25 miles from the local site and from each other. */
export const siteSeparationMilesMin = 25;
/**
 * Claim 7 "substantially diametrically opposed": bearings from the primary that differ by
 * 180 deg +- this tolerance count as opposed. The claim gives no figure; 30 deg keeps the two
 * mirrors in opposite half-planes with margin, so one regional disaster rarely reaches both.
 */
export const opposedToleranceDeg = 30;

export interface LatLon {
  lat: number;
  lon: number;
}

const rad = (deg: number): number => (deg * Math.PI) / 180;
const deg = (r: number): number => (r * 180) / Math.PI;

/** Great-circle distance in km (haversine). */
export function distanceKm(a: LatLon, b: LatLon): number {
  const dLat = rad(b.lat - a.lat);
  const dLon = rad(b.lon - a.lon);
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(rad(a.lat)) * Math.cos(rad(b.lat)) * Math.sin(dLon / 2) ** 2;
  return 2 * earthRadiusKm * Math.asin(Math.min(1, Math.sqrt(h)));
}

export function distanceMiles(a: LatLon, b: LatLon): number {
  return distanceKm(a, b) / kmPerMile;
}

/** Initial bearing (forward azimuth) from a to b, degrees clockwise from true north in [0, 360). */
export function initialBearingDeg(a: LatLon, b: LatLon): number {
  const phi1 = rad(a.lat);
  const phi2 = rad(b.lat);
  const dLon = rad(b.lon - a.lon);
  const y = Math.sin(dLon) * Math.cos(phi2);
  const x = Math.cos(phi1) * Math.sin(phi2) - Math.sin(phi1) * Math.cos(phi2) * Math.cos(dLon);
  return (deg(Math.atan2(y, x)) + 360) % 360;
}

/** The smaller angle between two bearings, in [0, 180]. */
export function bearingDifferenceDeg(a: number, b: number): number {
  const d = Math.abs(a - b) % 360;
  return d > 180 ? 360 - d : d;
}

export interface GeoSite {
  name: string;
  location?: LatLon;
}

export interface MirrorGeo {
  name: string;
  distanceKm: number;
  distanceMiles: number;
  bearingDeg: number;
  /** Claim 5: closer than siteSeparationMilesMin to the primary. */
  tooClose: boolean;
}

export interface OppositionGeo {
  mirrors: [string, string];
  /** Difference of the two bearings seen from the primary; 180 = diametrically opposed. */
  bearingDifferenceDeg: number;
  /** 180 - bearingDifferenceDeg: 0 means exactly opposed. */
  offOpposedDeg: number;
  substantiallyOpposed: boolean;
  mirrorsApartKm: number;
  mirrorsApartMiles: number;
}

export interface GeoReport {
  mirrors: MirrorGeo[];
  /** Only with exactly two located mirrors (claim 6/7). */
  opposition?: OppositionGeo;
  /** Sites without a location: nothing can be checked for them. */
  unlocated: string[];
  /** What a human should look at (claims not met). */
  warnings: string[];
  /** One informational line per finding, for the start-up log. */
  notes: string[];
}

const r1 = (x: number): string => x.toFixed(1);

/** The checks of claims 5-7 for one primary and its mirrors. */
export function checkGeography(primary: GeoSite, mirrors: readonly GeoSite[]): GeoReport {
  const report: GeoReport = { mirrors: [], unlocated: [], warnings: [], notes: [] };
  if (!primary.location) {
    report.unlocated.push(primary.name, ...mirrors.map((m) => m.name));
    if (mirrors.some((m) => m.location)) report.notes.push(`${primary.name} has no location: mirror distances cannot be checked`);
    return report;
  }
  const p = primary.location;
  const located: { name: string; location: LatLon }[] = [];
  for (const m of mirrors) {
    if (!m.location) {
      report.unlocated.push(m.name);
      continue;
    }
    located.push({ name: m.name, location: m.location });
    const km = distanceKm(p, m.location);
    const miles = km / kmPerMile;
    const g: MirrorGeo = { name: m.name, distanceKm: km, distanceMiles: miles, bearingDeg: initialBearingDeg(p, m.location), tooClose: miles < siteSeparationMilesMin };
    report.mirrors.push(g);
    report.notes.push(`mirror ${m.name} is ${r1(miles)} miles (${r1(km)} km) from ${primary.name}, bearing ${r1(g.bearingDeg)} deg`);
    if (g.tooClose) {
      report.warnings.push(`mirror ${m.name} is only ${r1(miles)} miles from ${primary.name}; claim 5 wants at least ${siteSeparationMilesMin} miles so one local disaster cannot take both`);
    }
  }
  if (located.length === 2 && mirrors.length === 2) {
    const [a, b] = located as [(typeof located)[0], (typeof located)[0]];
    const diff = bearingDifferenceDeg(initialBearingDeg(p, a.location), initialBearingDeg(p, b.location));
    const apartKm = distanceKm(a.location, b.location);
    const o: OppositionGeo = {
      mirrors: [a.name, b.name],
      bearingDifferenceDeg: diff,
      offOpposedDeg: 180 - diff,
      substantiallyOpposed: 180 - diff <= opposedToleranceDeg,
      mirrorsApartKm: apartKm,
      mirrorsApartMiles: apartKm / kmPerMile,
    };
    report.opposition = o;
    report.notes.push(`mirrors ${a.name} and ${b.name} are ${r1(diff)} deg apart seen from ${primary.name} (${r1(o.offOpposedDeg)} deg from diametrically opposed) and ${r1(o.mirrorsApartMiles)} miles from each other`);
    if (!o.substantiallyOpposed) {
      report.warnings.push(`mirrors ${a.name} and ${b.name} are ${r1(o.offOpposedDeg)} deg from diametrically opposed seen from ${primary.name}; claim 7 wants them on opposite sides (within ${opposedToleranceDeg} deg)`);
    }
    if (o.mirrorsApartMiles < siteSeparationMilesMin) {
      report.warnings.push(`mirrors ${a.name} and ${b.name} are only ${r1(o.mirrorsApartMiles)} miles apart; claim 7 wants at least about ${siteSeparationMilesMin} miles`);
    }
  }
  return report;
}
